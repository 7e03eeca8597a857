"""A labelling project's folder: labels in the layout ``train`` reads, settings, fine-tuning rounds.

Layout of ``PROJECT``::

    label.json            settings and where the page was (written atomically)
    data/images/NNNNNN.png  labelled frames, exactly as decoded (the trainer's DATA_DIR is data/)
    data/masks/NNNNNN.png   their masks, 0/255
    runs/round-NNN/       one fine-tune each: the trainer's OUT_DIR (best.pt, last.pt,
                          metrics.jsonl, config.yaml) plus round.json and train.log
    apply/<round>/        masks/ and overlay.mp4 of the video command with that round's weights
    scan.json             the current model's scores per frame (for the least-sure frames)
    .tmp/                 files being written (renamed into place when whole)

``NNNNNN`` is the frame index, as the video command names its masks. Nothing
is ever written outside ``PROJECT``: every path is checked after resolving
links.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["OutsideProject", "Project", "Round", "png_bytes", "read_json", "stem", "write_atomic"]


class OutsideProject(Exception):
    """A path that resolves (through ``..`` or a link) outside the project folder."""


def stem(i: int) -> str:
    """The file stem of frame ``i`` (the video command's mask names)."""
    return f"{i:06d}"


def png_bytes(array: np.ndarray) -> bytes:
    """An ``(H, W)`` or ``(H, W, 3)`` uint8 array as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_json(path: Path) -> dict:
    """A JSON object from a file, or ``{}`` when absent or unreadable (the project rewrites it whole)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file in ``tmp_dir`` (same file system), then rename.

    The temporary file lives outside ``path``'s folder, so a reader listing that
    folder (the trainer) never sees a partial file, and a crash leaves only a
    stray file in ``tmp_dir``.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(4)}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class Round:
    """One fine-tune: the trainer's ``OUT_DIR`` and what the label command recorded about it.

    Attributes:
        name: ``round-NNN``.
        folder: Its folder.
        info: ``round.json``: ``init``, ``epochs``, ``batch_size``, ``labels`` (fingerprint), ``start``.
        epochs_done: Lines in ``metrics.jsonl``.
        history: Those lines.
    """

    name: str
    folder: Path
    info: dict
    epochs_done: int
    history: list

    @property
    def best(self) -> Path | None:
        p = self.folder / "best.pt"
        return p if p.is_file() else None

    @property
    def last(self) -> Path | None:
        p = self.folder / "last.pt"
        return p if p.is_file() else None

    @property
    def finished(self) -> bool:
        return self.epochs_done >= int(self.info.get("epochs", 0) or 0) > 0


class Project:
    """The folder ``root`` of a labelling project (created on first use).

    Raises:
        ConfigError: ``root`` is a file, cannot be created, or one of its folders
            is a link to somewhere outside it.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"PROJECT={root}: is a file; give a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"PROJECT={root}: cannot be created ({e.strerror or e})") from None
        self.root = root
        self.real_root = Path(os.path.realpath(root))
        self.data = root / "data"
        self.images = self.data / "images"
        self.masks = self.data / "masks"
        self.runs = root / "runs"
        self.apply_dir = root / "apply"
        self.tmp = root / ".tmp"
        self.state_file = root / "label.json"
        self.scan_file = root / "scan.json"
        for folder in (self.images, self.masks, self.runs, self.apply_dir, self.tmp):
            try:
                self.inside(folder)
            except OutsideProject:
                raise ConfigError(
                    f"PROJECT={root}: {folder.relative_to(root)} leads outside the project (a link?); remove it"
                ) from None
            folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ one server at a time

    def lock(self) -> None:
        """Hold the project for this process (released when it exits): two label commands on one
        project would start rounds, write labels and clean up over each other.

        Raises:
            ConfigError: Another label server holds it.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        path = self.tmp / "server.lock"
        self._lock_file = open(path, "a+")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.seek(0)
            who = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise ConfigError(
                f"PROJECT={self.root} is open in another label command ({who}); use its page (Apply is there "
                "too), stop it, or give another PROJECT"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}")
        self._lock_file.flush()

    # ------------------------------------------------------------------ paths

    def inside(self, path: Path) -> Path:
        """``path`` with links resolved, if that stays inside the project.

        Raises:
            OutsideProject: It resolves outside (``..``, an absolute path, a link).
        """
        real = Path(os.path.realpath(path))
        if real != self.real_root and self.real_root not in real.parents:
            raise OutsideProject(str(path))
        return real

    def resolve_relative(self, rel: str) -> Path:
        """A file named by a path relative to the project (from a request), checked.

        Raises:
            OutsideProject: Absolute, with ``..``, a NUL or backslash, or resolving outside.
        """
        if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or os.path.isabs(rel):
            raise OutsideProject(rel)
        parts = rel.split("/")
        if any(p in ("..", ".") for p in parts):
            raise OutsideProject(rel)
        return self.inside(self.root / rel)

    # ------------------------------------------------------------------ state

    read_json = staticmethod(read_json)

    def write_json(self, path: Path, data: dict) -> None:
        self.inside(path.parent)
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"), self.tmp)

    def state(self) -> dict:
        return self.read_json(self.state_file)

    def update_state(self, **changes) -> dict:
        state = self.state()
        state.update(changes)
        self.write_json(self.state_file, state)
        return state

    # ------------------------------------------------------------------ labels

    def labels(self) -> list[int]:
        """Frame indices with both an image and a mask, ascending."""
        found = []
        for p in self.masks.glob("*.png"):
            if p.stem.isdigit() and len(p.stem) == 6 and (self.images / p.name).is_file():
                found.append(int(p.stem))
        return sorted(found)

    def mask_path(self, i: int) -> Path:
        return self.masks / f"{stem(i)}.png"

    def save_label(self, i: int, frame: np.ndarray, mask: np.ndarray) -> None:
        """Write frame ``i``'s image (once) and its 0/255 mask, each atomically.

        The image goes first: a crash between the two renames leaves an image
        without a mask, which :meth:`repair` removes (the trainer would refuse it).
        """
        image_path = self.images / f"{stem(i)}.png"
        mask_path = self.mask_path(i)
        self.inside(image_path.parent)
        self.inside(mask_path.parent)
        for p in (image_path, mask_path):
            if p.is_symlink():
                raise OutsideProject(str(p))
        if not image_path.is_file():
            write_atomic(image_path, png_bytes(frame), self.tmp)
        write_atomic(mask_path, png_bytes(np.where(mask, 255, 0).astype(np.uint8)), self.tmp)

    def delete_label(self, i: int) -> bool:
        """Remove frame ``i``'s mask and image; False when it had none."""
        had = self.mask_path(i).exists()
        for p in (self.mask_path(i), self.images / f"{stem(i)}.png"):
            if p.is_symlink() or p.exists():
                p.unlink()
        return had

    def read_mask(self, i: int) -> np.ndarray | None:
        """Frame ``i``'s saved mask as booleans, or None."""
        from PIL import Image

        path = self.mask_path(i)
        if not path.is_file():
            return None
        with Image.open(self.inside(path)) as im:
            return np.asarray(im.convert("L")) > 0

    def repair(self, frame_count: int) -> list[str]:
        """Remove what a crash can leave: images without masks, stray temporary files and
        unfinished applications; note labels of frames the source lacks. Call it holding
        :meth:`lock`. Returns lines saying what was done."""
        notes = []
        for p in sorted(self.images.glob("*.png")):
            if not (self.masks / p.name).exists():
                p.unlink()
                notes.append(f"removed {p.relative_to(self.root)} (no mask beside it; an interrupted save)")
        for i in self.labels():
            if i >= frame_count:
                notes.append(
                    f"note: label {stem(i)} is past the source's last frame ({frame_count - 1}); it still trains"
                )
        for p in self.tmp.glob("*.partial"):
            p.unlink()
        for p in [*self.tmp.glob("*.old"), *self.tmp.glob("apply-*")]:
            shutil.rmtree(p, ignore_errors=True)
        return notes

    def labels_fingerprint(self) -> str:
        """Changes when a label is added, removed or saved again."""
        h = hashlib.sha1()
        for i in self.labels():
            st = self.mask_path(i).stat()
            h.update(f"{i}:{st.st_mtime_ns}:{st.st_size};".encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ rounds

    def rounds(self) -> list[Round]:
        """Fine-tuning rounds, oldest first."""
        found = []
        for folder in sorted(self.runs.glob("round-[0-9][0-9][0-9]")):
            if not folder.is_dir():
                continue
            history = []
            metrics = folder / "metrics.jsonl"
            if metrics.is_file():
                for line in metrics.read_text(encoding="utf-8").splitlines():
                    try:
                        history.append(json.loads(line))
                    except ValueError:
                        pass
            found.append(Round(folder.name, folder, self.read_json(folder / "round.json"), len(history), history))
        return found

    def new_round_folder(self) -> Path:
        rounds = self.rounds()
        n = int(rounds[-1].name.split("-")[1]) + 1 if rounds else 1
        folder = self.runs / f"round-{n:03d}"
        folder.mkdir(parents=True)
        return folder

    def current_round(self) -> Round | None:
        """The newest round with a ``best.pt`` (its weights are the current model)."""
        for r in reversed(self.rounds()):
            if r.best is not None:
                return r
        return None

    def replace_dir(self, partial: Path, final: Path) -> None:
        """Move a finished output folder into place, replacing an older one of the same name."""
        self.inside(final.parent)
        if final.exists():
            old = self.tmp / f"{final.name}.{secrets.token_hex(4)}.old"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(partial, final)
