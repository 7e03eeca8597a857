"""The folder job: what a batch run does, whichever engine runs it.

A plan (:func:`plan_run`: the inputs, their output names, the resume and rerun
rules, the boxes), a segmenter built from the settings (:func:`make_segmenter`),
and the writer of outputs (:func:`write_outputs`, :func:`gallery_row`,
:func:`write_failure_log`). The thread and process pipelines
(:mod:`.local`) and Ray (:mod:`face_segmentation_pytorch.pipeline.ray_engine`)
each run the same plan and write through the same code. Settings are the dict
of :data:`.settings.KEYS` that the command parsed.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..segmentation.backends import BACKEND_NAMES, BACKENDS, backend_precisions
from ..segmentation.precision import PRECISIONS
from .settings import AUTO, FAILURE_LOG_NAME, OUTPUT_KEYS, RUN_SETTINGS_NAME, SEGMENTER_KEYS

__all__ = [
    "check_precision_keys",
    "resolve_device",
    "collect_inputs",
    "output_stems",
    "output_kinds",
    "write_outputs",
    "first_line",
    "check_writable",
    "plural",
    "make_segmenter",
    "Plan",
    "check_settings",
    "plan_run",
    "report_unused_boxes",
    "output_settings",
    "check_rerun_settings",
    "record_settings",
    "nothing_to_do",
    "start_line",
    "gallery_row",
    "write_failure_log",
]


def check_precision_keys(cfg: dict, need) -> None:
    """PRECISION and COMPILE, as every command that runs the network takes them
    (``need(cond, key, what)`` raises the command's one-line error)."""
    need(cfg["PRECISION"] in PRECISIONS, "PRECISION", f"expected {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    need(isinstance(cfg["COMPILE"], bool), "COMPILE", "expected true or false")


def check_backend_keys(cfg: dict, need) -> None:
    """BACKEND, and PRECISION and COMPILE with it (``need(cond, key, what)`` raises the command's
    one-line error)."""
    need(cfg["BACKEND"] in BACKENDS, "BACKEND", f"expected {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")
    ok = backend_precisions(cfg["BACKEND"])
    need(
        cfg["PRECISION"] not in PRECISIONS or cfg["PRECISION"] in ok,
        "PRECISION",
        f"BACKEND={cfg['BACKEND']} runs {' or '.join(ok)}; use BACKEND=torch for {cfg['PRECISION']}",
    )
    need(
        cfg["BACKEND"] == "torch" or cfg.get("COMPILE") is not True,
        "COMPILE",
        f"torch.compile applies to BACKEND=torch; {cfg['BACKEND']} compiles the graph itself (leave COMPILE unset)",
    )


def resolve_device(name: str | None):
    import torch

    from ..segmentation.segmenter import resolve_device

    try:
        device = resolve_device(name)
    except RuntimeError:
        raise ConfigError(f"DEVICE={name!r} is invalid: expected cpu, cuda or cuda:N") from None
    except ValueError as e:
        raise ConfigError(f"DEVICE={name}: {e}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"DEVICE={name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"DEVICE={name!r} is not supported: use cpu or cuda")
    return device


_GLOB_CHARS = set("*?[")


def collect_inputs(spec: str, recursive: bool) -> tuple[list[Path], Path, list[tuple[Path, str]]]:
    """Resolve IMGS_DIR to image paths.

    Returns:
        ``(images, root, missing)``: the images in a stable order, the folder
        that outputs under OUT_DIR mirror, and listed files that do not exist
        (each with a reason).
    """
    from ..files.imageio import OUTPUT_SUFFIXES, find_images, image_extensions

    path = Path(spec).expanduser()
    if path.is_dir():
        images, skipped = find_images(path, recursive=recursive)
        if not images:
            raise ConfigError(
                f"IMGS_DIR={path}: no image files found"
                + (f" ({skipped} other files skipped)" if skipped else "")
                + ("" if recursive else "; add RECURSIVE=true to look in sub-folders")
            )
        return images, path, []
    if path.is_file():
        # A list of image paths, one per line; '#' starts a comment.
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"IMGS_DIR={path}: cannot read the list file ({e})") from None
        base = path.parent
        images, missing, seen = [], [], set()
        for line in lines:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            p = Path(entry).expanduser()
            p = p if p.is_absolute() else base / p
            if p in seen:
                continue
            seen.add(p)
            # Any listed path that is not a folder is an input (a named pipe or
            # /dev/fd/N too); what cannot be decoded is reported when it is read.
            if p.exists() and not p.is_dir():
                images.append(p)
            else:
                missing.append((p, f"listed in {path} but no such file"))
        if not images and not missing:
            raise ConfigError(f"IMGS_DIR={path}: the list file names no images")
        every = images + [m for m, _ in missing]
        root = Path(os.path.commonpath([str(p.parent) for p in every]))
        return images, root, missing
    if _GLOB_CHARS & set(spec):
        exts = image_extensions()
        images = sorted(
            Path(p)
            for p in glob.glob(os.path.expanduser(spec), recursive=True)
            if os.path.isfile(p) and Path(p).suffix.lower() in exts and not p.endswith(OUTPUT_SUFFIXES)
        )
        if not images:
            raise ConfigError(f"IMGS_DIR={spec}: the pattern matches no image files")
        root = Path(os.path.commonpath([str(p.parent) for p in images]))
        return images, root, []
    raise ConfigError(
        f"IMGS_DIR={path}: no such folder or file; give a folder, a text file listing images, or a glob pattern"
    )


def output_stems(images: list[Path], root: Path, out_dir: Path | None) -> list[Path]:
    """Each image's output path without the ``__kind.ext`` suffix.

    Next to the image: ``<file name>``. Under OUT_DIR: ``<stem>`` in the
    mirrored folder, unless another image there has the same stem (``a.jpg``,
    ``a.png``): those keep their full name, so none overwrites another.
    """
    if out_dir is None:
        return list(images)
    rel = [p.relative_to(root) for p in images]
    counts: dict[Path, int] = {}
    for r in rel:
        key = r.parent / r.stem.lower()
        counts[key] = counts.get(key, 0) + 1
    return [out_dir / r.parent / (r.stem if counts[r.parent / r.stem.lower()] == 1 else r.name) for r in rel]


def output_kinds(cfg: dict) -> list[str]:
    if cfg["MASK_THRESHOLD"] is not None:
        kinds = ["__mask.png"]
    else:
        kinds = [{"png8": "__heatmap.png", "png16": "__heatmap16.png", "npy": "__heatmap.npy"}[cfg["HEATMAP_FORMAT"]]]
    if cfg["CROP"] is not None or cfg["BOXES"] is not None:
        kinds.append("__faces.json")
    if cfg["OVERLAY"]:
        kinds.append("__overlay.png")
    if cfg["CUTOUT"]:
        kinds.append("__cutout.png")
    return kinds


def write_outputs(seg, stem: Path, kinds: list[str], per_face: bool = False) -> None:
    import json

    import numpy as np

    from ..files.atomic import save_atomic
    from ..files.imageio import save_npy_atomic, save_png_atomic
    from ..segmentation.render import cutout, heatmap_to_png_array, overlay

    shown = seg.alpha if seg.alpha is not None else seg.mask if seg.mask is not None else seg.pmap
    for kind in kinds:
        target = stem.with_name(stem.name + kind)
        if kind == "__mask.png":
            # With FEATHER the mask file holds the soft alpha as 8-bit grey.
            mask = heatmap_to_png_array(seg.alpha, 8) if seg.alpha is not None else seg.mask.astype(np.uint8) * 255
            save_png_atomic(mask, target)
        elif kind == "__heatmap.png":
            save_png_atomic(heatmap_to_png_array(seg.pmap, 8), target)
        elif kind == "__heatmap16.png":
            save_png_atomic(heatmap_to_png_array(seg.pmap, 16), target)
        elif kind == "__heatmap.npy":
            save_npy_atomic(seg.pmap.astype(np.float32), target)
        elif kind == "__overlay.png":
            save_png_atomic(overlay(seg.image, shown), target)
        elif kind == "__cutout.png":
            save_png_atomic(cutout(seg.image, shown), target)
        elif kind == "__faces.json":
            doc = {"image_size": list(seg.size), "faces": [f.to_json() for f in seg.faces or []]}
            data = json.dumps(doc, indent=1).encode("utf-8")
            save_atomic(target, lambda f: f.write(data))
    if per_face and seg.faces:
        for k in range(len(seg.faces)):
            face = (
                heatmap_to_png_array(seg.face_alpha(k), 8) if seg.feather else seg.face_mask(k).astype(np.uint8) * 255
            )
            save_png_atomic(face, stem.with_name(f"{stem.name}__face{k}__mask.png"))


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_writable(folder: Path, key: str) -> list[Path]:
    """Create ``folder`` if needed and check it is writable; returns the folders created."""
    from ..files.atomic import ensure_writable_dir

    try:
        return ensure_writable_dir(folder)
    except OSError as e:
        raise ConfigError(f"{key}={folder}: cannot write there ({e.strerror or e}); choose a writable folder") from None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def make_segmenter(cfg, device, *, progress: bool, **override):
    """The :class:`FaceSegmenter` the command line's keys describe.

    Args:
        cfg: A command's keys (batch, video, evaluate): each ``SEGMENTER_KEYS``
            key it has is passed on.
        device: The device to run on (``None``: CUDA when visible, else CPU).
        progress: Show download progress.
        override: FaceSegmenter keywords to use instead of the keys' values.

    Raises:
        ConfigError: A setting the weights or the device reject (face channel,
            input size, precision), naming the key.
        WeightsError: The weights cannot be found, downloaded or verified.
    """
    from ..segmentation.segmenter import FaceSegmenter

    kwargs = {kw: cfg[key] for kw, key in SEGMENTER_KEYS.items() if key in cfg}
    kwargs.update(override)
    try:
        return FaceSegmenter(cfg["WEIGHTS"], device=device, progress=progress, **kwargs)
    except ValueError as e:
        # One line naming the key (the video and evaluate commands have no FACE_CHANNEL).
        fc = cfg.get("FACE_CHANNEL")
        if fc is not None and "face_channel" in str(e):
            raise ConfigError(f"FACE_CHANNEL={fc} is invalid: {e}") from None
        if "precision" in str(e):
            raise ConfigError(f"PRECISION={cfg['PRECISION']}: {e}") from None
        raise ConfigError(str(e)) from None


@dataclass
class Plan:
    """What a batch run will do, before any model is loaded (every engine's plan)."""

    out_dir: Path | None
    images: list[Path]
    root: Path
    missing: list[tuple[Path, str]]
    kinds: list[str]
    stems: list[Path]
    todo: list[int]
    user_boxes: list | None
    settings_path: Path | None = None
    settings: dict | None = None

    @property
    def skipped(self) -> int:
        return len(self.images) - len(self.todo)


def check_settings(cfg: dict) -> Path | None:
    """The checks every engine makes first; returns ``OUT_DIR`` as a path."""
    from PIL import Image

    from ..weights.registry import get_weights

    get_weights(cfg["WEIGHTS"])  # an unknown name is a mistake in the command: say so first
    out_dir = Path(cfg["OUT_DIR"]).expanduser() if cfg["OUT_DIR"] else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"OUT_DIR={out_dir}: is a file; give a folder")
    if cfg["MAX_IMAGE_PIXELS"] is not None:
        Image.MAX_IMAGE_PIXELS = cfg["MAX_IMAGE_PIXELS"]
    return out_dir


def plan_run(cfg: dict, out_dir: Path | None, created: list[Path]) -> Plan:
    """Inputs, output names, the resume rule and the boxes, as every engine uses them."""
    images, root, missing = collect_inputs(cfg["IMGS_DIR"], cfg["RECURSIVE"])
    if out_dir is not None:
        created += check_writable(out_dir, "OUT_DIR")
    kinds = output_kinds(cfg)
    stems = output_stems(images, root, out_dir)
    # Resumable runs: an image whose outputs all exist is done.
    todo = [
        i
        for i in range(len(images))
        if cfg["OVERWRITE"] or not all(stems[i].with_name(stems[i].name + k).exists() for k in kinds)
    ]
    settings_path = (out_dir or root) / RUN_SETTINGS_NAME
    settings = output_settings(cfg)
    check_rerun_settings(
        settings_path, settings, kinds, cfg["OVERWRITE"], "OUT_DIR" if out_dir is not None else "IMGS_DIR"
    )
    user_boxes = None
    if cfg["BOXES"] is not None:
        from ..segmentation.crop import load_boxes_file

        boxes_path = Path(cfg["BOXES"]).expanduser()
        table = load_boxes_file(boxes_path)
        # Per image: its boxes; with CROP=faces an image not in the file is
        # detected (None), without it has no face ([]).
        missing_entry = None if cfg["CROP"] else []
        user_boxes = [table.get(p.relative_to(root).as_posix(), table.get(p.name, missing_entry)) for p in images]
        report_unused_boxes(boxes_path, table, images, root, user_boxes)
    return Plan(out_dir, images, root, missing, kinds, stems, todo, user_boxes, settings_path, settings)


def report_unused_boxes(boxes_path: Path, table: dict, images: list[Path], root: Path, user_boxes: list) -> None:
    """One stderr line for each BOXES entry that names no input image, and for each
    box that lies wholly outside its image (read from the header); the run goes on
    with the other boxes, and an image left without any has no face."""
    names = {p.relative_to(root).as_posix() for p in images} | {p.name for p in images}
    for key in table:
        if key not in names:
            print(
                f"face_segmentation_pytorch: BOXES={boxes_path}: {key!r} names no input image in "
                f"{root}; its boxes are ignored",
                file=sys.stderr,
            )
    from ..files.imageio import header_size

    for path, boxes in zip(images, user_boxes):
        if not boxes:
            continue
        try:
            h, w = header_size(path)
        except (OSError, ValueError):
            continue  # reported as a failure when the image is read
        for x, y, bw, bh in boxes:
            if x >= w or y >= h:
                print(
                    f"face_segmentation_pytorch: BOXES={boxes_path}: box [{x}, {y}, {bw}, {bh}] of "
                    f"{path.relative_to(root).as_posix()} lies outside its {w}x{h} image; ignored",
                    file=sys.stderr,
                )


def output_settings(cfg: dict) -> dict:
    """The settings that decide a run's outputs, as JSON-ready values.

    Files are named by their resolved path; a weights file also by its size and
    modification time, so converting other weights to the same name counts as
    a change.
    """
    out = {key: cfg[key] for key in OUTPUT_KEYS}
    for key in ("WEIGHTS_FILE", "BOXES"):
        if out[key] is not None:
            out[key] = str(Path(out[key]).expanduser().resolve())
    if out["WEIGHTS_FILE"] is not None:
        try:
            st = Path(out["WEIGHTS_FILE"]).stat()
            out["WEIGHTS_FILE"] += f" ({st.st_size} bytes, modified {st.st_mtime_ns})"
        except OSError:
            pass  # a missing file is reported where it is loaded
    return out


def _read_record(path: Path) -> dict:
    """The settings recorded per output kind (``{"__mask.png": {...}, ...}``); empty when there is none."""
    import json

    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))["outputs"]
        if not isinstance(record, dict):
            raise ValueError(record)
        return record
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path}: unreadable record of an earlier run's settings; delete it, or pass OVERWRITE=true"
        ) from None


def check_rerun_settings(path: Path, settings: dict, kinds: list[str], overwrite: bool, folder_key: str) -> None:
    """The rerun rule: outputs made with other settings are never kept silently.

    The record holds, per output kind (``__mask.png``, ``__heatmap.png``...), the
    settings that made the files of that kind; a run that writes a kind made
    with other settings stops, unless ``overwrite`` redoes every image.

    Raises:
        ConfigError: One line naming the changed keys and the fix.
    """
    if overwrite:
        return
    record = _read_record(path)
    changed: dict[str, str] = {}
    for kind in kinds:
        saved = record.get(kind)
        if saved is None:
            continue
        for key, value in settings.items():
            if saved.get(key) != value:
                changed[key] = f"{key} was {_show(saved.get(key))}, now {_show(value)}"
    if changed:
        raise ConfigError(
            f"{folder_key}={path.parent} holds outputs made with other settings ({'; '.join(changed.values())}): "
            f"pass OVERWRITE=true to redo every image with the new ones, or choose another OUT_DIR"
        )


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def record_settings(plan: Plan) -> None:
    """Record the run's output settings beside its outputs, per kind (once the run starts writing)."""
    import json

    from ..files.atomic import save_atomic

    if plan.settings_path is None or plan.settings is None:
        return
    try:
        record = _read_record(plan.settings_path)
    except ConfigError:
        record = {}  # OVERWRITE=true over a damaged record: this run's settings replace it
    if all(record.get(kind) == plan.settings for kind in plan.kinds):
        return
    record.update({kind: plan.settings for kind in plan.kinds})
    text = json.dumps({"outputs": record}, indent=1, sort_keys=True) + "\n"
    save_atomic(plan.settings_path, lambda f: f.write(text.encode("utf-8")))


def nothing_to_do(cfg: dict, plan: Plan) -> bool:
    """When every image already has its outputs: clear an old failure log, say so."""
    if plan.todo or plan.missing:
        return False
    write_failure_log(cfg, plan.out_dir, plan.root, [])  # clears a log of an earlier run
    print(
        f"face_segmentation_pytorch: all {plural(len(plan.images), 'image')} already have their outputs; "
        "nothing to do (OVERWRITE=true redoes them)",
        file=sys.stderr,
    )
    return True


def start_line(cfg: dict, plan: Plan, weights_source, device, input_size, runtime: str | None = None) -> str:
    """The first line a run prints: inputs, weights, device, precision, input size;
    for a backend other than torch, ``runtime`` (``FaceSegmenter.runtime``: which
    runtime, and the precision it reports)."""
    return (
        f"face_segmentation_pytorch: {plural(len(plan.images), 'image')} from {cfg['IMGS_DIR']}"
        + (f", {plan.skipped} already done (OVERWRITE=true redoes them)" if plan.skipped else "")
        + f"; weights {weights_source}, device {device}"
        + (f" ({runtime or BACKEND_NAMES[cfg['BACKEND']]})" if cfg["BACKEND"] != "torch" else "")
        + (f", precision {cfg['PRECISION']}" if cfg["PRECISION"] != "fp32" else "")
        + f", input size {input_size or 'native'}"
    )


def gallery_row(path: Path, seg):
    import numpy as np
    from PIL import Image

    from ..segmentation.render import heatmap_to_png_array, overlay

    shown = seg.alpha if seg.alpha is not None else seg.mask if seg.mask is not None else seg.pmap
    thumb = seg.image.copy()
    thumb.thumbnail((512, 512))
    small = Image.fromarray(heatmap_to_png_array(shown.astype(np.float32), 8)).resize(thumb.size, Image.BILINEAR)
    return (path.name, [thumb, overlay(thumb, np.asarray(small, np.float32) / 255.0), small])


def write_failure_log(cfg: dict, out_dir: Path | None, root: Path, failures) -> Path | None:
    from ..files.atomic import save_atomic

    setting = cfg["FAILURE_LOG"]
    if setting is None:
        return None
    path = Path(setting).expanduser() if setting != AUTO else (out_dir or root) / FAILURE_LOG_NAME
    if not failures:
        if setting == AUTO and path.is_file():
            path.unlink()  # a log of an earlier run; this run has no failures
        return None
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "stage", "reason"])
    for p, stage, reason in failures:
        # The path has its own column; the reason need not repeat it.
        prefix = f"{p}: "
        w.writerow([str(p), stage, reason[len(prefix) :] if reason.startswith(prefix) else reason])
    try:
        save_atomic(path, lambda f: f.write(buf.getvalue().encode("utf-8")))
    except OSError as e:
        print(f"warning: cannot write the failure log {path}: {e.strerror or e}", file=sys.stderr)
        return None
    return path


def write_gallery(cfg: dict, rows: list, failures: list) -> None:
    """The GALLERY picture (image, overlay, mask or heatmap per row), written
    atomically; a failure to draw or write it joins ``failures``."""
    from ..files.atomic import save_atomic
    from ..segmentation.render import gallery

    try:
        pic = gallery(rows, headers=("image", "overlay", "mask" if cfg["MASK_THRESHOLD"] else "heatmap"))
        buf = io.BytesIO()
        fmt = "JPEG" if cfg["GALLERY"].lower().endswith((".jpg", ".jpeg")) else "PNG"
        pic.save(buf, format=fmt, quality=90)
        save_atomic(Path(cfg["GALLERY"]), lambda f: f.write(buf.getvalue()))
    except (OSError, ValueError) as e:
        failures.append((Path(cfg["GALLERY"]), "gallery", first_line(e)))


def report_run(
    cfg: dict,
    out_dir: Path | None,
    root: Path,
    *,
    done: int,
    skipped: int,
    failures: list,
    no_face: list,
    cropping: bool,
    elapsed: float,
    interrupted: bool,
    resumable: bool,
) -> int:
    """The end of every engine's run: the lines for images without a face and
    for failures, the failure CSV, the summary line; returns the exit status.

    Args:
        resumable: Whether the summary says to run the command again (an
            interrupted run; a Ray job that stopped).
    """
    for path in no_face:
        print(f"no face: {path} (empty outputs written)", file=sys.stderr)
    for path, stage, reason in failures:
        msg = reason if reason.startswith(str(path)) else f"{path}: {reason}"
        print(f"failed ({stage}): {msg}", file=sys.stderr)
    log = write_failure_log(cfg, out_dir, root, failures)
    summary = (
        "face_segmentation_pytorch: "
        + ("interrupted; " if interrupted else "")
        + f"{plural(done, 'image')} done, {len(failures)} failed, "
        f"{skipped} skipped (outputs exist)"
        + (f", {len(no_face)} without a face" if cropping else "")
        # A rate only where something was processed; "0.00 images/s" says nothing.
        + (f", {done / elapsed:.2f} images/s" if done and elapsed > 0 else "")
        + (f"; failures listed in {log}" if log is not None else "")
        + ("; run the same command again to resume" if resumable else "")
    )
    print(summary, file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failures else 0
