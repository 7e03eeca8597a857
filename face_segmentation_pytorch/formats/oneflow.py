"""Read LinkNet34 checkpoints saved by OneFlow, without OneFlow or protobuf.

Two folder layouts exist, and both hold one sub-folder per variable with its
raw values in a file named ``out``:

* **eager** (``flow.save``, OneFlow 0.5, ``Oneflow-Inc/models`` FaceSeg): the
  sub-folder is named by the state_dict key (``firstconv.weight/``,
  ``encoder2.0.downsample.1.running_mean/``); beside ``out`` sits ``meta``, a
  protobuf *text format* message such as
  ``shape { dim: 64 dim: 3 dim: 7 dim: 7 } data_type: kFloat``; an empty
  ``snapshot_done`` file marks a finished save. BatchNorm has no
  ``num_batches_tracked``.
* **lazy** (``CheckPoint.save``, ``oneflow_vision_model/face_seg``): names use
  ``-`` as separator and OneFlow's BatchNorm names
  (``firstbn-gamma``, ``encoder2-0-downsample-conv1-weight``,
  ``decoder3-norm2-moving_variance``); releases of OneFlow 0.2 wrote ``out``
  without ``meta``, and training saves also hold optimizer slots
  (``*-momentum``) and ``System-*`` entries, which are skipped.

``out`` is the C-order little-endian array with no header, so its size must be
the product of the shape times the item size. Where ``meta`` is missing the
shape is LinkNet34's (:func:`~face_segmentation_pytorch.models.linknet.expected_state_shapes`).

The path may be the checkpoint folder, a folder that holds it one or two
levels down (published archives' inner layout is unknown), or a ``.zip`` of
either, which is read in place.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import torch

from ..errors import WeightsError
from ..models.linknet import expected_state_shapes

__all__ = [
    "OneFlowCheckpointError",
    "OneFlowReport",
    "lazy_name_to_state_key",
    "parse_meta",
    "find_checkpoint_folder",
    "read_oneflow_checkpoint",
    "load_oneflow_checkpoint",
]

# Directory names never searched for a checkpoint (archive tool debris).
_SKIP_DIRS = ("__MACOSX",)
# Lazy (OneFlow 0.2/0.3) variable suffixes -> state_dict parameter names.
_LAZY_PARAMS = {
    "weight": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# Children of a lazy ``downsample`` scope -> nn.Sequential indices.
_LAZY_DOWNSAMPLE = {"conv1": "0", "bn1": "1"}
# OneFlow DataType names (and their enum numbers, if a meta holds numbers).
_DTYPES = {"kFloat": np.dtype("<f4"), "kInt64": np.dtype("<i8")}
_DTYPE_NUMBERS = {"2": "kFloat", "6": "kInt64"}
_NBT = "num_batches_tracked"
# The entry that tells the number of classes (and a LinkNet34 from other nets).
_HEAD = "finalconv3"


class OneFlowCheckpointError(WeightsError, ValueError):
    """A OneFlow checkpoint is missing, truncated, or not of LinkNet34."""


@dataclass
class OneFlowReport:
    """What :func:`read_oneflow_checkpoint` found, for printing."""

    source: str
    folder: str = ""
    layout: str = ""
    num_classes: int = 0
    loaded: list[str] = field(default_factory=list)
    shapes_from_network: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        inside = f", checkpoint folder {self.folder}" if self.folder else ""
        plural = "es" if self.num_classes != 1 else ""
        out = [
            f"read {self.source} (OneFlow {self.layout} layout{inside}): {len(self.loaded)} tensors, "
            f"LinkNet34 with {self.num_classes} class{plural}"
        ]
        if self.shapes_from_network:
            out.append(f"{len(self.shapes_from_network)} entries had no meta; shapes taken from LinkNet34")
        if self.filled:
            out.append(f"filled {len(self.filled)} BatchNorm num_batches_tracked with 0")
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} optimizer/system entries")
        if self.ignored:
            out.append("ignored entries not in LinkNet34: " + ", ".join(self.ignored))
        return out


def lazy_name_to_state_key(name: str) -> str | None:
    """Rename one variable of OneFlow's lazy checkpoint to the state_dict key.

    A pure function: ``-`` becomes ``.``; the last part maps ``gamma`` ->
    ``weight``, ``beta`` -> ``bias``, ``moving_mean`` -> ``running_mean``,
    ``moving_variance`` -> ``running_var``; inside a ``downsample`` scope
    ``conv1`` -> ``0`` and ``bn1`` -> ``1``.

    Examples: ``"encoder2-0-downsample-bn1-moving_mean"`` ->
    ``"encoder2.0.downsample.1.running_mean"``; ``"finalconv3-bias"`` ->
    ``"finalconv3.bias"``.

    Args:
        name: The sub-folder name of one variable.

    Returns:
        The key, or ``None`` for entries that are not weights: ``System-*``,
        optimizer slots (``*-momentum``, Adam's ``*-m`` / ``*-v``) and any
        name whose last part is not a parameter or statistic.
    """
    if name == "System" or name.startswith("System-"):
        return None
    parts = name.split("-")
    param = _LAZY_PARAMS.get(parts[-1])
    if param is None or len(parts) < 2 or not all(parts[:-1]):
        return None
    scope = parts[:-1]
    for i in range(1, len(scope)):
        if scope[i - 1] == "downsample":
            scope[i] = _LAZY_DOWNSAMPLE.get(scope[i], scope[i])
    return ".".join([*scope, param])


def parse_meta(text: str) -> tuple[tuple[int, ...], str | None]:
    """Read the shape and data type from a ``meta`` file (protobuf text format).

    Accepts ``dim`` fields on one line or several, and comments.

    Args:
        text: The file's contents, e.g.
            ``"shape {\\n  dim: 64\\n  dim: 3\\n}\\ndata_type: kFloat\\n"``.

    Returns:
        ``(shape, data_type)``; ``data_type`` is the enum name (``"kFloat"``) or
        ``None`` when the file does not say. A ``shape { }`` block without
        ``dim`` is a scalar, ``()``.

    Raises:
        ValueError: When there is no ``shape`` block or a ``dim`` is not a
            non-negative integer.
    """
    text = re.sub(r"#[^\n]*", "", text)
    m = re.search(r"\bshape\s*:?\s*\{([^{}]*)\}", text)
    if m is None:
        raise ValueError("no 'shape { ... }' block")
    dims = re.findall(r"\bdim\s*:\s*([^\s}]+)", m.group(1))
    shape = []
    for d in dims:
        if not d.isdigit():
            raise ValueError(f"dim {d!r} is not a non-negative integer")
        shape.append(int(d))
    t = re.search(r"\bdata_type\s*:\s*([A-Za-z0-9_]+)", text)
    dtype = None if t is None else _DTYPE_NUMBERS.get(t.group(1), t.group(1))
    return tuple(shape), dtype


class _Tree:
    """Read-only view of a folder or a zip archive, by POSIX paths relative to its top."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self._dirs: dict[str, set[str]] = {}
        self._files: dict[str, dict[str, zipfile.ZipInfo]] = {}
        if os.path.isdir(path):
            return
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise OneFlowCheckpointError(
                f"{path}: not a readable zip archive ({e}); download it again, or pass the extracted checkpoint folder"
            ) from None
        for info in infos:
            parts = [s for s in PurePosixPath(info.filename).parts if s not in ("", ".", "/")]
            if not parts or ".." in parts:
                continue
            # Register every ancestor folder (archives may omit folder entries).
            for i in range(len(parts)):
                self._dirs.setdefault("/".join(parts[:i]), set())
                self._files.setdefault("/".join(parts[:i]), {})
                if i:
                    self._dirs["/".join(parts[: i - 1])].add(parts[i - 1])
            if info.is_dir():
                self._dirs["/".join(parts[:-1])].add(parts[-1])
            else:
                self._files["/".join(parts[:-1])][parts[-1]] = info

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def display(self, rel: str) -> str:
        if not rel:
            return self.path
        if self.zip is not None:
            return f"{self.path}:{rel}"
        return os.path.join(self.path, *rel.split("/"))

    def listdir(self, rel: str) -> tuple[list[str], dict[str, int]]:
        """Sub-folder names and ``{file name: size}`` of one folder."""
        if self.zip is not None:
            files = {n: i.file_size for n, i in self._files.get(rel, {}).items()}
            return sorted(self._dirs.get(rel, ())), files
        dirs, files = [], {}
        try:
            with os.scandir(self.display(rel)) as it:
                for e in it:
                    if e.is_dir():
                        dirs.append(e.name)
                    elif e.is_file():
                        files[e.name] = e.stat().st_size
        except OSError:
            pass
        return sorted(dirs), files

    def read_bytes(self, rel: str) -> bytes | bytearray:
        if self.zip is not None:
            parent, _, name = rel.rpartition("/")
            try:
                return self.zip.read(self._files[parent][name])
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise OneFlowCheckpointError(
                    f"{self.display(rel)}: cannot read from the zip ({e}); download it again"
                ) from None
        path = self.display(rel)
        try:
            with open(path, "rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                n = f.readinto(data)
        except OSError as e:
            raise OneFlowCheckpointError(f"{path}: cannot read ({e.strerror})") from None
        return data[:n] if n != len(data) else data


def _entries(tree: _Tree, rel: str) -> dict[str, dict[str, int]]:
    """``{sub-folder name: its files}`` for every sub-folder of ``rel`` holding an ``out``."""
    dirs, _ = tree.listdir(rel)
    found = {}
    for d in dirs:
        _, files = tree.listdir(f"{rel}/{d}" if rel else d)
        if "out" in files:
            found[d] = files
    return found


def _is_linknet(entries) -> bool:
    return any(n.split(".")[0].split("-")[0] == _HEAD for n in entries)


def find_checkpoint_folder(tree_or_path) -> str:
    """Locate the checkpoint folder inside a path, as a POSIX path relative to it.

    The path itself qualifies when one of its sub-folders holds an ``out``
    file; otherwise its sub-folders, then theirs, are tried (two levels).
    When several qualify, the one holding ``finalconv3`` (LinkNet34's head)
    wins; a tie is an error.

    Returns:
        ``""`` for the path itself, else e.g. ``"linknet_oneflow_model"``.

    Raises:
        OneFlowCheckpointError: No checkpoint, or several LinkNet34 ones.
    """
    tree = tree_or_path if isinstance(tree_or_path, _Tree) else _open_tree(os.fspath(tree_or_path))
    try:
        if _entries(tree, ""):
            return ""
        found: dict[str, bool] = {}
        level = [""]
        for _ in range(2):
            nxt = []
            for rel in level:
                for d in tree.listdir(rel)[0]:
                    if d.startswith(".") or d in _SKIP_DIRS:
                        continue
                    sub = f"{rel}/{d}" if rel else d
                    entries = _entries(tree, sub)
                    if entries:
                        found[sub] = _is_linknet(entries)
                    else:
                        nxt.append(sub)
            level = nxt
        if not found:
            raise OneFlowCheckpointError(
                f"{tree.path}: no OneFlow checkpoint found (no sub-folder holding an 'out' file, "
                "up to two levels down); pass the folder written by flow.save or CheckPoint.save, "
                "or its .zip"
            )
        linknet = [k for k, v in found.items() if v]
        if len(linknet) == 1:
            return linknet[0]
        if len(found) == 1:
            return next(iter(found))
        names = ", ".join(linknet or list(found))
        raise OneFlowCheckpointError(
            f"{tree.path}: holds several OneFlow checkpoints ({names}); "
            "extract it if needed and pass the one folder to convert"
        )
    finally:
        if tree is not tree_or_path:
            tree.close()


def _open_tree(path: str) -> _Tree:
    if not os.path.exists(path):
        raise OneFlowCheckpointError(f"{path}: no such folder or file; pass a OneFlow checkpoint folder or .zip")
    if not os.path.isdir(path) and not zipfile.is_zipfile(path):
        if path.lower().endswith(".zip"):
            raise OneFlowCheckpointError(
                f"{path}: not a readable zip archive (truncated or corrupt); download it again, "
                "or pass the extracted checkpoint folder"
            )
        raise OneFlowCheckpointError(
            f"{path}: neither a folder nor a zip archive; pass the OneFlow checkpoint folder "
            "(sub-folders with 'out' files) or a .zip of it"
        )
    return _Tree(path)


def _entry_key(name: str) -> tuple[str | None, str]:
    """``(state_dict key or None, layout)`` of one entry name."""
    if "." in name:
        return name, "eager"
    if "-" in name:
        return lazy_name_to_state_key(name), "lazy"
    return name, "eager"


def read_oneflow_checkpoint(
    path: str | os.PathLike, *, strict: bool = True
) -> tuple[OrderedDict[str, torch.Tensor], OneFlowReport]:
    """Read a OneFlow LinkNet34 checkpoint into a PyTorch state_dict.

    Args:
        path: The checkpoint folder, a folder holding it one or two levels
            down, or a ``.zip`` of either.
        strict: Refuse entries that are neither LinkNet34 weights nor known
            optimizer/system entries (with ``False`` they are reported and
            ignored).

    Returns:
        ``(state_dict, report)``: the state_dict has exactly
        :class:`~face_segmentation_pytorch.models.linknet.LinkNet34`'s keys,
        in its order (float32, ``num_batches_tracked`` int64, filled with 0
        when missing), ready for ``load_state_dict(strict=True)``.

    Raises:
        OneFlowCheckpointError: One line naming the entry and the fix, for
            a path that is not a checkpoint, a missing or truncated ``out``,
            an unreadable ``meta``, a shape that does not fit, or a data type
            other than ``kFloat``.
    """
    path = os.fspath(path)
    tree = _open_tree(path)
    try:
        return _read(tree, path, strict)
    finally:
        tree.close()


def _read(tree: _Tree, path: str, strict: bool) -> tuple[OrderedDict[str, torch.Tensor], OneFlowReport]:
    root = find_checkpoint_folder(tree)
    report = OneFlowReport(source=path, folder=root)
    where = tree.display(root)
    entries = _entries(tree, root)

    by_key: dict[str, str] = {}
    layouts: dict[str, str] = {}
    for name in sorted(entries):
        key, layout = _entry_key(name)
        if key is None:
            report.skipped.append(name)
            continue
        layouts.setdefault(layout, name)
        if key in by_key:
            raise OneFlowCheckpointError(
                f"{where}: entries {by_key[key]!r} and {name!r} both give {key!r}; remove one of them"
            )
        by_key[key] = name
    if len(layouts) > 1:
        raise OneFlowCheckpointError(
            f"{where}: mixes eager names ({layouts['eager']!r}) and lazy names ({layouts['lazy']!r}); "
            "pass a folder written by one save"
        )
    report.layout = next(iter(layouts), "eager")

    def rel(name: str, file: str) -> str:
        return "/".join(p for p in (root, name, file) if p)

    metas: dict[str, tuple[tuple[int, ...], str | None]] = {}

    def meta_of(key: str):
        if key not in metas:
            name = by_key[key]
            if "meta" not in entries[name]:
                metas[key] = None
            else:
                raw = tree.read_bytes(rel(name, "meta"))
                try:
                    metas[key] = parse_meta(bytes(raw).decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as e:
                    raise OneFlowCheckpointError(
                        f"{where}: entry {name!r}: unreadable meta ({e}); copy or extract the "
                        "checkpoint again, or delete the meta file to use LinkNet34's shape"
                    ) from None
        return metas[key]

    # The number of classes, from the head: its meta, else the bias's byte count.
    head_w, head_b = f"{_HEAD}.weight", f"{_HEAD}.bias"
    if head_w not in by_key and head_b not in by_key:
        sample = ", ".join(list(entries)[:6])
        raise OneFlowCheckpointError(
            f"{where}: a OneFlow checkpoint, but not of LinkNet34: no {_HEAD} entry "
            f"(entries: {sample}{', ...' if len(entries) > 6 else ''}); pass a LinkNet34 "
            "face segmentation checkpoint"
        )
    num_classes = 0
    for key in (head_w, head_b):
        if key in by_key and meta_of(key) is not None and meta_of(key)[0]:
            num_classes = meta_of(key)[0][0]
            break
    else:
        if head_b in by_key:
            num_classes = entries[by_key[head_b]]["out"] // 4
        else:
            num_classes = entries[by_key[head_w]]["out"] // (32 * 2 * 2 * 4)
    if num_classes < 1:
        raise OneFlowCheckpointError(
            f"{where}: entry {by_key.get(head_b, by_key.get(head_w))!r} gives {num_classes} classes; "
            "the checkpoint is truncated: copy or extract it again"
        )
    report.num_classes = int(num_classes)
    expected = expected_state_shapes(report.num_classes)

    extra = [by_key[k] for k in by_key if k not in expected]
    if extra and strict:
        raise OneFlowCheckpointError(
            f"{where}: entries that LinkNet34 does not have: {', '.join(extra[:8])}"
            f"{', ...' if len(extra) > 8 else ''}; pass strict=False (--no-strict) to ignore them"
        )
    report.ignored = extra
    missing = [k for k in expected if k not in by_key and not k.endswith(_NBT)]
    if missing:
        raise OneFlowCheckpointError(
            f"{where}: {len(missing)} LinkNet34 weights are missing ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); the checkpoint is incomplete or of another "
            "network: copy or extract it again"
        )

    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in expected.items():
        if key not in by_key:
            state[key] = torch.zeros((), dtype=torch.int64)
            report.filled.append(key)
            continue
        name = by_key[key]
        want = "kInt64" if key.endswith(_NBT) else "kFloat"
        meta = meta_of(key)
        if meta is None:
            got_shape, dtype_name = shape, want
            report.shapes_from_network.append(name)
        else:
            got_shape, dtype_name = meta
            dtype_name = dtype_name or want
        if dtype_name != want:
            raise OneFlowCheckpointError(
                f"{where}: entry {name!r} has data_type {dtype_name}, expected {want}; only float32 "
                "checkpoints are read: save the model in float32 (model.float()) and convert again"
            )
        if tuple(got_shape) != tuple(shape):
            raise OneFlowCheckpointError(
                f"{where}: entry {name!r} has shape {tuple(got_shape)}, LinkNet34 with "
                f"{report.num_classes} class(es) needs {tuple(shape)}; this checkpoint is of "
                "another network"
            )
        dtype = _DTYPES[dtype_name]
        count = int(np.prod(shape, dtype=np.int64))
        size = entries[name]["out"]
        if size != count * dtype.itemsize:
            what = "truncated" if size < count * dtype.itemsize else "longer than its shape"
            raise OneFlowCheckpointError(
                f"{where}: entry {name!r}: out holds {size} bytes but shape {tuple(shape)} of "
                f"{dtype_name} needs {count * dtype.itemsize}; the file is {what}: copy or "
                "extract the checkpoint again"
            )
        raw = tree.read_bytes(rel(name, "out"))
        if len(raw) != count * dtype.itemsize:
            raise OneFlowCheckpointError(
                f"{where}: entry {name!r}: read {len(raw)} bytes of {count * dtype.itemsize}; "
                "the file is truncated: copy or extract the checkpoint again"
            )
        # Little-endian to native (a no-op on x86 and ARM); bytes from a zip
        # are read-only, so those are copied once, file reads are adopted.
        arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        arr = arr.astype(dtype.newbyteorder("="), copy=not isinstance(raw, bytearray))
        state[key] = torch.from_numpy(arr)
        report.loaded.append(key)
    return state, report


def load_oneflow_checkpoint(path: str | os.PathLike, *, strict: bool = True) -> OrderedDict[str, torch.Tensor]:
    """Read a OneFlow LinkNet34 checkpoint (folder or ``.zip``) as a state_dict.

    See :func:`read_oneflow_checkpoint`, which also returns a report.

    Example::

        model = LinkNet34()
        model.load_state_dict(load_oneflow_checkpoint("linknet_oneflow_model.zip"))
    """
    return read_oneflow_checkpoint(path, strict=strict)[0]
