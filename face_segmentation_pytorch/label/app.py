"""What the labelling page can ask for, without HTTP: frames, model masks, labels, suggestions,
fine-tunes and applications. :mod:`.server` maps requests onto these methods.

Every method that changes something checks its input first and raises
:class:`BadRequest` (nothing changed) or :class:`Conflict`.
"""

from __future__ import annotations

import io
import secrets
import shutil
import threading
from pathlib import Path

import numpy as np

from . import suggest
from .frames import FrameSource
from .jobs import Job, python_command
from .predictor import Predictor, Scanner
from .project import Project, png_bytes

__all__ = ["PNG_SIGNATURE", "BadRequest", "Conflict", "LabelApp", "NotFound", "apply_arguments", "train_arguments"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: What the background fine-tune runs: the train command itself, with its keys, statuses and outputs.
TRAIN_MODULE = "face_segmentation_pytorch.train"
VIDEO_MODULE = "face_segmentation_pytorch.video"


class BadRequest(Exception):
    """The request cannot be done as asked (HTTP 400); the message says why."""


class Conflict(Exception):
    """The request clashes with what is going on (HTTP 409), e.g. a second fine-tune."""


class NotFound(Exception):
    """No such frame or label (HTTP 404)."""


def _value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def train_arguments(
    project: Project, settings: dict, out_dir: Path, init: str, epochs: int, batch: int, resume: bool
) -> list[str]:
    """The train command's ``KEY=VALUE`` arguments for one round."""
    size = settings["INPUT_SIZE"]
    args = [
        f"DATA_DIR={project.data}",
        f"OUT_DIR={out_dir}",
        f"WEIGHTS={settings['WEIGHTS']}",
        f"INIT={init}",
        f"INPUT_SIZE={size if isinstance(size, int) else 'auto'}",
        f"EPOCHS={epochs}",
        f"BATCH_SIZE={batch}",
        # A few labels: every one trains (best.pt is then the last epoch's weights).
        "VAL_FRACTION=0",
        f"OPTIMIZER={settings['OPTIMIZER']}",
        f"LR={_value(settings['LR'])}",
        "PROGRESS=true",
    ]
    for key in ("MODEL_PARAMS_DIR", "THREADS", "DEVICE"):
        if settings.get(key) is not None:
            args.append(f"{key}={settings[key]}")
    if resume:
        args.append("RESUME=true")
    return args


def apply_arguments(frames: FrameSource, settings: dict, weights: Path | None, out: Path) -> list[str]:
    """The video command's ``KEY=VALUE`` arguments: masks and an overlay of the whole source into ``out``."""
    args = [
        f"SOURCE={frames.video_source_argument()}",
        f"OUT={out / 'overlay.mp4'}",
        f"MASKS_DIR={out / 'masks'}",
        f"WEIGHTS={settings['WEIGHTS']}",
        f"INPUT_SIZE={_value(settings['INPUT_SIZE'])}",
        f"MASK_THRESHOLD={settings['THRESHOLD']}",
    ]
    if weights is not None:
        args.append(f"WEIGHTS_FILE={weights}")
    for key in ("MODEL_PARAMS_DIR", "DEVICE"):
        if settings.get(key) is not None:
            args.append(f"{key}={settings[key]}")
    return args


class LabelApp:
    """One project, its source and its current model, for the page.

    Args:
        project: The project folder.
        frames: The source's frames.
        settings: The label command's settings.
    """

    def __init__(self, project: Project, frames: FrameSource, settings: dict) -> None:
        self.project = project
        self.frames = frames
        self.settings = settings
        self.predictor = Predictor(project, frames, settings)
        self.scanner = Scanner(self.predictor, settings)
        self.job: Job | None = None
        self._lock = threading.Lock()
        self._sizes: dict[int, tuple[int, int]] = {}

    # ------------------------------------------------------------------ frames

    def check_frame(self, i: int) -> int:
        if not 0 <= i < self.frames.count:
            raise NotFound(f"no frame {i}: the source has {self.frames.count} frames (0..{self.frames.count - 1})")
        return i

    def frame_size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of frame ``i``."""
        if i not in self._sizes:
            self._sizes[i] = tuple(self.frames.get(self.check_frame(i)).shape[:2])
        return self._sizes[i]

    def frame_png(self, i: int) -> bytes:
        return png_bytes(self.frames.get(self.check_frame(i)))

    def pmap_png(self, i: int) -> bytes:
        """The current model's face probability of frame ``i``, 8-bit grey (``round(255 p)``)."""
        _, u8 = self.predictor.pmap_u8(self.check_frame(i))
        return png_bytes(u8)

    def mask_png(self, i: int) -> bytes:
        mask = self.project.read_mask(self.check_frame(i))
        if mask is None:
            raise NotFound(f"frame {i} has no label")
        return png_bytes(np.where(mask, 255, 0).astype(np.uint8))

    def overlay_png(self, i: int) -> bytes:
        """Frame ``i`` with the current model's mask in red (half opacity), for the preview strip."""
        frame = self.frames.get(self.check_frame(i))
        _, u8 = self.predictor.pmap_u8(i)
        mask = u8.astype(np.float32) / 255.0 > float(self.settings["THRESHOLD"])
        out = frame.astype(np.float32)
        out[mask] = 0.5 * out[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
        return png_bytes(np.rint(out).astype(np.uint8))

    # ------------------------------------------------------------------ labels

    def decode_mask(self, i: int, body: bytes) -> np.ndarray:
        """The boolean mask in a PNG the page sent (white = face, as drawn), checked against frame ``i``.

        Raises:
            BadRequest: Not a PNG, undecodable, or not the frame's size.
        """
        from PIL import Image

        h, w = self.frame_size(i)
        if not body.startswith(PNG_SIGNATURE):
            raise BadRequest("mask: not a PNG file (send the mask as a PNG image, white = face, black = background)")
        try:
            im = Image.open(io.BytesIO(body), formats=["PNG"])
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for damaged files
            raise BadRequest(f"mask: cannot read the PNG ({_first_line(e)})") from None
        with im:
            if im.size != (w, h):
                raise BadRequest(f"mask: {im.size[0]}x{im.size[1]} pixels, but frame {i} is {w}x{h}")
            try:
                im.load()
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = np.asarray(im.convert("RGBA"))
                    grey = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"))
                    return (grey >= 128) & (rgba[..., 3] >= 128)
                return np.asarray(im.convert("L")) >= 128
            except Exception as e:  # noqa: BLE001
                raise BadRequest(f"mask: cannot decode the PNG ({_first_line(e)})") from None

    def save_label(self, i: int, body: bytes) -> dict:
        """Save frame ``i``'s image and the mask in ``body`` (checked first: a bad one changes nothing)."""
        self.check_frame(i)
        mask = self.decode_mask(i, body)
        with self._lock:
            self.project.save_label(i, self.frames.get(i), mask)
        return {"saved": i, "face_pixels": int(mask.sum()), "labels": self.project.labels()}

    def delete_label(self, i: int) -> dict:
        self.check_frame(i)
        with self._lock:
            if not self.project.delete_label(i):
                raise NotFound(f"frame {i} has no label")
        return {"deleted": i, "labels": self.project.labels()}

    def set_current(self, i: int) -> dict:
        self.check_frame(i)
        self.project.update_state(current=i)
        return {"current": i}

    # ------------------------------------------------------------------ state

    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def state(self) -> dict:
        """Everything the page shows besides pictures."""
        info = self.predictor.current()
        self.scanner.ensure(busy=self.busy())
        scan = self.scanner.result(info.id)
        labels = self.project.labels()
        scores = [u + j for u, j in zip(scan.get("unsure", []), scan.get("jump", []))]
        suggestions = suggest.rank(
            self.frames.count, int(self.settings["START_FRAMES"]), labels, scan.get("frames", []), scores
        )
        current = self.project.state().get("current")
        if not isinstance(current, int) or not 0 <= current < self.frames.count:
            current = suggestions[0]["frame"] if suggestions else 0
        r = self.project.current_round()
        return {
            "frames": self.frames.count,
            "source": self.frames.path,
            "project": str(self.project.root),
            "current": current,
            "labels": labels,
            "suggestions": suggestions,
            "start_frames": suggest.start_frames(self.frames.count, int(self.settings["START_FRAMES"])),
            "model": info.as_dict(),
            "scan": dict(self.scanner.progress),
            "threshold": self.settings["THRESHOLD"],
            "train": {
                "epochs": self.settings["EPOCHS"],
                "batch_size": self.settings["BATCH_SIZE"],
                "has_best": r is not None,
            },
            "job": self.job_status(),
            "applied": self.applied(),
            "commands": {
                "apply": f"python -m face_segmentation_pytorch.label PROJECT={self.project.root} APPLY=true",
                "video": "python -m face_segmentation_pytorch.video "
                + " ".join(apply_arguments(self.frames, self.settings, info.path, Path("<folder>"))),
            },
        }

    def applied(self) -> list[dict]:
        out = []
        for folder in sorted(self.project.apply_dir.iterdir()) if self.project.apply_dir.is_dir() else []:
            if folder.is_dir() and not folder.name.startswith("."):
                files = [p.relative_to(self.project.root).as_posix() for p in (folder / "overlay.mp4",) if p.is_file()]
                out.append({"name": folder.name, "files": files, "masks": (folder / "masks").is_dir()})
        return out

    # ------------------------------------------------------------------ jobs

    def job_status(self) -> dict | None:
        job = self.job
        if job is None:
            return None
        status = job.status()
        if job.kind == "train":
            folder = Path(job.info["folder"])
            rounds = {r.name: r for r in self.project.rounds()}
            r = rounds.get(folder.name)
            if r is not None:
                status["epochs_done"] = r.epochs_done
                last = r.history[-1] if r.history else {}
                status["train_loss"] = last.get("train_loss")
        return status

    def start_train(self, epochs: int | None = None, start_from: str = "best") -> dict:
        """Start (or resume) a fine-tune in the background.

        A round that stopped before its last epoch is resumed when the labels
        and the starting point are unchanged since it started; otherwise a new
        round starts, from the current round's ``best.pt`` (``start_from="best"``)
        or from the starting weights (``"start"``).

        Raises:
            BadRequest: No labels, or bad ``epochs`` / ``start_from``.
            Conflict: A job is running.
        """
        epochs = self.settings["EPOCHS"] if epochs is None else epochs
        if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= 100000:
            raise BadRequest(f"epochs: expected an integer from 1 to 100000, got {epochs!r}")
        if start_from not in ("best", "start"):
            raise BadRequest(f"from: expected 'best' or 'start', got {start_from!r}")
        with self._lock:
            if self.busy():
                raise Conflict(f"a {self.job.kind} job is running; stop it first")
            labels = self.project.labels()
            if not labels:
                raise BadRequest("label at least one frame first (Save writes a label)")
            fingerprint = self.project.labels_fingerprint()
            rounds = self.project.rounds()
            latest = rounds[-1] if rounds else None
            resume = (
                latest is not None
                and latest.last is not None
                and not latest.finished
                and latest.info.get("labels") == fingerprint
                and latest.info.get("from") == start_from
            )
            if resume:
                folder, init = latest.folder, latest.info["init"]
                batch = int(latest.info["batch_size"])
                info = dict(latest.info, epochs=epochs)
            else:
                current = self.project.current_round()
                if start_from == "best" and current is not None:
                    init = str(current.best)
                else:
                    start = self.predictor.start_weights()
                    init = str(start) if start is not None else "pretrained"
                batch = min(int(self.settings["BATCH_SIZE"]), len(labels))
                folder = self.project.new_round_folder()
                info = {
                    "init": init,
                    "from": start_from,
                    "labels": fingerprint,
                    "label_count": len(labels),
                    "batch_size": batch,
                    "epochs": epochs,
                }
            self.project.write_json(folder / "round.json", info)
            args = train_arguments(self.project, self.settings, folder, init, epochs, batch, resume)
            self.scanner.stop()
            self.job = Job(
                "train",
                python_command(TRAIN_MODULE, args),
                folder / "train.log",
                {"round": folder.name, "folder": str(folder), "epochs": epochs, "resumed": resume},
            ).start()
            return self.job_status()

    def start_apply(self) -> dict:
        """Run the video command with the current model over the whole source, into ``apply/<model>/``.

        Raises:
            Conflict: A job is running.
        """
        with self._lock:
            if self.busy():
                raise Conflict(f"a {self.job.kind} job is running; stop it first")
            info = self.predictor.current()
            r = self.project.current_round()
            name = r.name if r is not None else "start"
            partial = self.project.tmp / f"apply-{name}-{secrets.token_hex(4)}"
            final = self.project.apply_dir / name
            args = apply_arguments(self.frames, self.settings, info.path, partial)

            def finish(job: Job) -> None:
                if job.returncode == 0:
                    self.project.replace_dir(partial, final)
                else:
                    shutil.rmtree(partial, ignore_errors=True)

            self.scanner.stop()
            self.job = Job(
                "apply",
                python_command(VIDEO_MODULE, args),
                self.project.apply_dir / f"{name}.log",
                {"name": name, "output": f"apply/{name}"},
                on_exit=finish,
            ).start()
            return self.job_status()

    def stop_job(self) -> dict:
        job = self.job
        if job is None or not job.running:
            raise Conflict("no job is running")
        job.stop()
        return self.job_status()

    def shutdown(self, wait: float = 120.0) -> str | None:
        """Stop a running job and wait for it (the trainer saves ``last.pt``); a line saying what happened."""
        self.scanner.stop()
        job = self.job
        if job is None or not job.running:
            return None
        try:
            job.stop(wait=wait)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            job.kill()
            return f"the {job.kind} job was ended at once (a second Ctrl-C); nothing more was saved"
        if job.running:
            job.kill()
            return f"the {job.kind} job did not stop within {wait:.0f} s and was ended"
        if job.kind == "train":
            return f"the fine-tune ({job.info['round']}) stopped and saved last.pt; Train on the page resumes it"
        return "the application to the source was stopped; start it again from the page or with APPLY=true"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
