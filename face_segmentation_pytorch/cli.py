"""Command line: ``python -m face_segmentation_pytorch KEY=VALUE ...``.

Keys are omegaconf dot-list style (``IMGS_DIR=photos MASK_THRESHOLD=0.5``).
User mistakes end with one ``error:`` line and exit status 2; images that
fail to read, run or write are listed at the end (and in a CSV log) and make
the exit status 1; Ctrl-C stops cleanly with a summary and exit status 130.
Runs resume: images whose outputs all exist are skipped.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, run_command
from .keys import Key, parse_dotlist
from .keys import help_text as keys_help_text
from .keys import is_int as _is_int

__all__ = [
    "main", "parse_args", "KEYS", "collect_inputs", "make_segmenter", "plan_run", "Plan", "SEGMENTER_KEYS",
    "RUN_SETTINGS_NAME", "OUTPUT_KEYS", "output_settings", "check_rerun_settings", "record_settings",
    "report_unused_boxes",
]


_AUTO = "auto"
FAILURE_LOG_NAME = "face_segmentation_failures.csv"

KEYS: dict[str, Key] = {
    "IMGS_DIR": Key(
        None,
        "the images (required): a folder, a text file listing image paths (one per line, "
        "relative to the file), or a glob pattern such as 'photos/**/*.jpg'",
    ),
    "MODEL_PARAMS_DIR": Key(
        None,
        "folder with the weights (face_seg_fcn8s.pt / .safetensors / .caffemodel; for LinkNet "
        "linknet_oneflow_model.pt / .safetensors or the OneFlow folder linknet_oneflow_model/); downloaded there when "
        "missing; null: $FACE_SEGMENTATION_PYTORCH_HOME, else $XDG_CACHE_HOME/face_segmentation_pytorch, "
        "else ~/.cache/face_segmentation_pytorch",
    ),
    "OUT_DIR": Key(
        None,
        "write <stem>__heatmap.png here, mirroring sub-folders; null: write "
        "<image file name>__heatmap.png next to each image",
    ),
    "DEVICE": Key(None, "cpu, cuda or cuda:N; null: cuda when available, else cpu"),
    "BATCH_SIZE": Key(1, "images per forward pass"),
    "PRECISION": Key(
        "fp32",
        "fp32 (exact: Caffe's numbers on every device; TF32 off on CUDA), tf32 (CUDA), fp16 (CUDA), "
        "bf16 (CUDA, or CPUs with native bfloat16)",
    ),
    "COMPILE": Key(False, "run the network through torch.compile (says how long it took; falls back when unavailable)"),
    "MASK_THRESHOLD": Key(
        None, "null: write heatmaps; a number in (0, 1): write 0/255 masks (__mask.png)"
    ),
    "POSTPROCESS": Key(
        None,
        "steps applied to masks, comma-separated: largest, fill_holes, smooth, full "
        "(the authors' combined sequence); needs MASK_THRESHOLD",
    ),
    "DILATE": Key(
        0,
        "grow (or, negative, shrink) the mask by N pixels after POSTPROCESS, in the image's own "
        "pixels (each face on its own with cropping); needs MASK_THRESHOLD",
    ),
    "FEATHER": Key(
        0,
        "soften the mask's edge over R pixels each side (0.5 on the edge); __mask.png then holds "
        "that alpha as 8-bit grey, CUTOUT and OVERLAY use it; needs MASK_THRESHOLD",
    ),
    "HEATMAP_FORMAT": Key("png8", "png8 (__heatmap.png), png16 (__heatmap16.png) or npy (__heatmap.npy, float32)"),
    "OVERLAY": Key(False, "also write <name>__overlay.png: the image with the face blended in red"),
    "CUTOUT": Key(False, "also write <name>__cutout.png: RGBA with the face probability (or mask) as alpha"),
    "GALLERY": Key(None, "also write this picture: image, overlay and map side by side (first 16 images)"),
    "CROP": Key(
        None,
        "null: segment whole images; faces: detect faces (pip install "
        "'face_segmentation_pytorch[crop]'), segment each face crop and paste the results "
        "back; also writes <name>__faces.json with the boxes",
    ),
    "BOXES": Key(
        None,
        "your own crop boxes instead of detection: JSON {\"image\": [[x, y, w, h], ...]} or "
        "CSV path,x,y,w,h (paths relative to IMGS_DIR, or file names)",
    ),
    "PER_FACE": Key(False, "with CROP or BOXES and MASK_THRESHOLD: also write one mask per face (__face<k>__mask.png)"),
    "MIN_FACE_SCORE": Key(0.95, "detector confidence below which faces are ignored (CROP=faces)"),
    "BACKEND": Key(
        "torch",
        "torch, or onnxruntime (CPU; pip install 'face_segmentation_pytorch[onnx]'): exports the "
        "network once to <weights file>.onnx beside the weights and runs it in ONNX Runtime",
    ),
    "INPUT_SIZE": Key(
        _AUTO,
        "auto: resize to the weights' input size (500, 300, or 256 for LinkNet) like the original tools; "
        "an int: resize to that square size (LinkNet: a multiple of 32); null: run at native size "
        "(LinkNet: padded to multiples of 32)",
    ),
    "WEIGHTS": Key(
        "fcn8s_500",
        "which weights entry (its family, preprocessing and output rule): fcn8s_500, fcn8s_300_no_aug, "
        "fcn8s_500_port, linknet34_oneflow, linknet34_oneflow_demo",
    ),
    "WEIGHTS_FILE": Key(
        None,
        "run the weights in this file (.pt, .safetensors, .caffemodel, a OneFlow folder or zip; "
        "e.g. a training run's best.pt) with WEIGHTS' architecture and preprocessing, instead of "
        "looking in MODEL_PARAMS_DIR",
    ),
    "WEIGHTS_URL": Key(None, "download the weights archive from this URL instead"),
    "WEIGHTS_SHA256": Key(None, "expected sha256 of the downloaded archive"),
    "FACE_CHANNEL": Key(
        None,
        "FCN-8s only. null: face = best non-background channel (authors' demo); an int: compare that "
        "channel with background only (15 reproduces the authors' C++ tool)",
    ),
    "RECURSIVE": Key(False, "also read images in sub-folders of IMGS_DIR"),
    "OVERWRITE": Key(False, "redo images whose outputs exist (default: skip them, so runs resume)"),
    "FAILURE_LOG": Key(
        _AUTO,
        f"CSV of failed images (path, stage, reason); auto: {FAILURE_LOG_NAME} in OUT_DIR "
        "(or beside the inputs), written only when something failed; null: none",
    ),
    "PIPELINE": Key(
        "auto",
        "where images are read and written while the network runs: threads (of this process), "
        "processes (worker processes: for GPUs, whose speed one process's image work cannot match), "
        "auto (processes on CUDA, threads on the CPU); outputs are the same",
    ),
    "WORKERS": Key(
        _AUTO,
        "threads or worker processes that decode and write images; auto: 2 threads, or every core "
        "but two (at most 16) processes",
    ),
    "PRE_NORMALIZE": Key(False, "stretch each image to 0..255 first (the original tool does not)"),
    "MAX_IMAGE_PIXELS": Key(None, "raise Pillow's decompression-bomb limit (pixels); null: Pillow's default"),
    "PROGRESS": Key(
        True,
        "show progress on stderr: bars on a terminal, a few plain lines when stderr is a file or a pipe",
    ),
    # ENGINE=ray: the same job run by Ray Data actors (pipeline/ray_engine.py).
    "ENGINE": Key(
        "local",
        "local: this process; ray: a pool of Ray Data actors, each loading the weights once (pip install "
        "'face_segmentation_pytorch[ray]'); inputs and outputs on paths every node sees",
    ),
    "RAY_ADDRESS": Key(
        None,
        "ENGINE=ray: the running Ray cluster to use (host:port, ray://host:port or auto); null: "
        "$RAY_ADDRESS if set, else a local Ray started for this run",
    ),
    "RAY_NUM_ACTORS": Key(
        None,
        "ENGINE=ray: actors, each with its own copy of the network; null: one per GPU slot with "
        "RAY_GPUS_PER_ACTOR, else one per node",
    ),
    "RAY_GPUS_PER_ACTOR": Key(0, "ENGINE=ray: GPUs each actor asks for (0: CPU actors; 0.5: two share a GPU)"),
}

_STRING_KEYS = (
    "IMGS_DIR", "MODEL_PARAMS_DIR", "OUT_DIR", "DEVICE", "WEIGHTS", "WEIGHTS_URL", "WEIGHTS_FILE",
    "WEIGHTS_SHA256", "PRECISION", "POSTPROCESS", "GALLERY", "FAILURE_LOG", "HEATMAP_FORMAT", "CROP", "BOXES", "BACKEND",
    "ENGINE", "RAY_ADDRESS", "PIPELINE",
)

USAGE = "usage: python -m face_segmentation_pytorch IMGS_DIR=<folder> [KEY=VALUE ...]"


def help_text() -> str:
    return keys_help_text(
        USAGE,
        "Segment faces in every image of a folder.",
        KEYS,
        "python -m face_segmentation_pytorch MODEL_PARAMS_DIR=weights IMGS_DIR=photos MASK_THRESHOLD=0.5",
    )


def parse_args(argv: list[str]) -> dict:
    """Parse ``KEY=VALUE`` arguments into a validated config dict.

    Raises:
        ConfigError: Unknown key (with a suggestion), malformed argument or
            invalid value.
    """
    cfg = parse_dotlist(argv, KEYS, _STRING_KEYS, USAGE)

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: {what}")

    if cfg["IMGS_DIR"] is None:
        raise ConfigError(f"IMGS_DIR is required: give the folder of images, e.g. IMGS_DIR=photos; {USAGE}")
    need(_is_int(cfg["BATCH_SIZE"]) and cfg["BATCH_SIZE"] >= 1, "BATCH_SIZE", "expected an integer >= 1")
    need(
        cfg["WORKERS"] == _AUTO or (_is_int(cfg["WORKERS"]) and cfg["WORKERS"] >= 1),
        "WORKERS",
        "expected auto or an integer >= 1",
    )
    need(cfg["PIPELINE"] in ("auto", "threads", "processes"), "PIPELINE", "expected auto, threads or processes")
    need(
        cfg["PIPELINE"] != "processes" or cfg["ENGINE"] == "local",
        "PIPELINE",
        "ENGINE=ray's actors are processes already and read in threads; leave PIPELINE out",
    )
    t = cfg["MASK_THRESHOLD"]
    need(
        t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1),
        "MASK_THRESHOLD",
        "expected a number strictly between 0 and 1, or null for heatmaps",
    )
    s = cfg["INPUT_SIZE"]
    need(
        s is None or s == _AUTO or (_is_int(s) and s >= 1),
        "INPUT_SIZE",
        "expected auto, null (native size) or a positive integer",
    )
    fc = cfg["FACE_CHANNEL"]
    need(fc is None or (_is_int(fc) and fc >= 1), "FACE_CHANNEL", "expected null or a channel index >= 1")
    need(cfg["CROP"] in (None, "faces"), "CROP", "expected null or faces")
    need(cfg["BACKEND"] in ("torch", "onnxruntime"), "BACKEND", "expected torch or onnxruntime")
    ms = cfg["MIN_FACE_SCORE"]
    need(isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 <= ms <= 1, "MIN_FACE_SCORE", "expected a number in [0, 1]")
    check_precision_keys(cfg, need)
    for name in ("RECURSIVE", "PRE_NORMALIZE", "PROGRESS", "OVERWRITE", "OVERLAY", "CUTOUT", "PER_FACE"):
        need(isinstance(cfg[name], bool), name, "expected true or false")
    mp = cfg["MAX_IMAGE_PIXELS"]
    need(mp is None or (_is_int(mp) and mp > 0), "MAX_IMAGE_PIXELS", "expected a positive integer")
    need(cfg["ENGINE"] in ("local", "ray"), "ENGINE", "expected local or ray")
    na, gpa = cfg["RAY_NUM_ACTORS"], cfg["RAY_GPUS_PER_ACTOR"]
    need(na is None or (_is_int(na) and na >= 1), "RAY_NUM_ACTORS", "expected null or an integer >= 1")
    need(
        isinstance(gpa, (int, float)) and not isinstance(gpa, bool) and gpa >= 0,
        "RAY_GPUS_PER_ACTOR",
        "expected a number >= 0 (0.5: two actors share a GPU)",
    )
    for name in ("RAY_ADDRESS", "RAY_NUM_ACTORS", "RAY_GPUS_PER_ACTOR"):
        need(cfg[name] == KEYS[name].default or cfg["ENGINE"] == "ray", name, "applies to ENGINE=ray only")
    need(cfg["HEATMAP_FORMAT"] in ("png8", "png16", "npy"), "HEATMAP_FORMAT", "expected png8, png16 or npy")
    if cfg["POSTPROCESS"] is not None:
        from .pipeline.postprocess import parse_steps

        parse_steps(cfg["POSTPROCESS"])
        need(t is not None, "POSTPROCESS", "post-processing works on masks: add MASK_THRESHOLD=0.5")
    need(_is_int(cfg["DILATE"]), "DILATE", "expected a whole number of pixels (negative shrinks)")
    need(_is_int(cfg["FEATHER"]) and cfg["FEATHER"] >= 0, "FEATHER", "expected a whole number of pixels >= 0")
    for name in ("DILATE", "FEATHER"):
        need(cfg[name] == 0 or t is not None, name, "works on masks: add MASK_THRESHOLD=0.5")
    if cfg["PER_FACE"]:
        need(cfg["CROP"] is not None or cfg["BOXES"] is not None, "PER_FACE", "needs CROP=faces or BOXES=<file>")
        need(t is not None, "PER_FACE", "per-face outputs are masks: add MASK_THRESHOLD=0.5")
    wf = cfg["WEIGHTS_FILE"]
    if wf is not None and not Path(wf).expanduser().exists():
        raise ConfigError(f"WEIGHTS_FILE={wf}: no such file or folder; give the path of a weights file")
    if wf is not None:
        cfg["WEIGHTS_FILE"] = str(Path(wf).expanduser())
    sha = cfg["WEIGHTS_SHA256"]
    if sha is not None:
        sha = sha.strip().lower()
        need(
            len(sha) == 64 and all(c in "0123456789abcdef" for c in sha),
            "WEIGHTS_SHA256",
            "expected 64 hexadecimal digits",
        )
        cfg["WEIGHTS_SHA256"] = sha
    return cfg


def check_precision_keys(cfg: dict, need) -> None:
    """PRECISION and COMPILE, as every command that runs the network takes them
    (``need(cond, key, what)`` raises the command's one-line error)."""
    need(cfg["PRECISION"] in ("fp32", "tf32", "fp16", "bf16"), "PRECISION", "expected fp32, tf32, fp16 or bf16")
    need(isinstance(cfg["COMPILE"], bool), "COMPILE", "expected true or false")


def _resolve_device(name: str | None):
    import torch

    from .pipeline.segmenter import resolve_device

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
    from .pipeline.imageio import OUTPUT_SUFFIXES, find_images, image_extensions

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
        f"IMGS_DIR={path}: no such folder or file; give a folder, a text file listing images, "
        "or a glob pattern"
    )


def _output_stems(images: list[Path], root: Path, out_dir: Path | None) -> list[Path]:
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
    return [
        out_dir / r.parent / (r.stem if counts[r.parent / r.stem.lower()] == 1 else r.name)
        for r in rel
    ]


def _output_kinds(cfg: dict) -> list[str]:
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


def _write_outputs(seg, stem: Path, kinds: list[str], per_face: bool = False) -> None:
    import json

    import numpy as np

    from .pipeline.atomic import save_atomic
    from .pipeline.imageio import save_npy_atomic, save_png_atomic
    from .pipeline.render import cutout, heatmap_to_png_array, overlay

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
            face = heatmap_to_png_array(seg.face_alpha(k), 8) if seg.feather else seg.face_mask(k).astype(np.uint8) * 255
            save_png_atomic(face, stem.with_name(f"{stem.name}__face{k}__mask.png"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_writable(folder: Path, key: str) -> list[Path]:
    """Create ``folder`` if needed and check it is writable; returns the folders created."""
    from .pipeline.atomic import ensure_writable_dir

    try:
        return ensure_writable_dir(folder)
    except OSError as e:
        raise ConfigError(f"{key}={folder}: cannot write there ({e.strerror or e}); choose a writable folder") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run(cfg: dict) -> int:
    """Run the batch job described by a parsed config. Returns the exit status.

    Folders the run creates (``OUT_DIR``, the weights folder) are removed
    again if the run ends with nothing written in them.
    """
    from .pipeline.atomic import remove_empty_dirs

    created: list[Path] = []
    try:
        if cfg.get("ENGINE") == "ray":
            from .pipeline.ray_engine import run_ray

            return run_ray(cfg, created)
        return _run(cfg, created)
    finally:
        remove_empty_dirs(created)


#: FaceSegmenter keyword -> command line key (besides the weights name, ``device``
#: and ``progress``): what every engine passes (``cli._run``, the Ray actors).
SEGMENTER_KEYS = {
    "params_dir": "MODEL_PARAMS_DIR",
    "weights_file": "WEIGHTS_FILE",
    "input_size": "INPUT_SIZE",
    "threshold": "MASK_THRESHOLD",
    "postprocess": "POSTPROCESS",
    "face_channel": "FACE_CHANNEL",
    "pre_normalize": "PRE_NORMALIZE",
    "crop": "CROP",
    "min_face_score": "MIN_FACE_SCORE",
    "dilate": "DILATE",
    "feather": "FEATHER",
    "precision": "PRECISION",
    "compile": "COMPILE",
    "backend": "BACKEND",
    "url": "WEIGHTS_URL",
    "sha256": "WEIGHTS_SHA256",
}


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
    from .pipeline.segmenter import FaceSegmenter

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

    from .pipeline.weights import get_weights

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
        created += _check_writable(out_dir, "OUT_DIR")
    kinds = _output_kinds(cfg)
    stems = _output_stems(images, root, out_dir)
    # Resumable runs: an image whose outputs all exist is done.
    todo = [
        i for i in range(len(images))
        if cfg["OVERWRITE"] or not all(stems[i].with_name(stems[i].name + k).exists() for k in kinds)
    ]
    settings_path = (out_dir or root) / RUN_SETTINGS_NAME
    settings = output_settings(cfg)
    check_rerun_settings(
        settings_path, settings, kinds, cfg["OVERWRITE"], "OUT_DIR" if out_dir is not None else "IMGS_DIR"
    )
    user_boxes = None
    if cfg["BOXES"] is not None:
        from .pipeline.crop import load_boxes_file

        boxes_path = Path(cfg["BOXES"]).expanduser()
        table = load_boxes_file(boxes_path)
        # Per image: its boxes; with CROP=faces an image not in the file is
        # detected (None), without it has no face ([]).
        missing_entry = None if cfg["CROP"] else []
        user_boxes = [
            table.get(p.relative_to(root).as_posix(), table.get(p.name, missing_entry)) for p in images
        ]
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
    from .pipeline.imageio import header_size

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


#: Kept beside a run's outputs: the settings that decided them (the rerun rule).
RUN_SETTINGS_NAME = "face_segmentation_run.json"

#: The keys whose values decide what the outputs hold. DEVICE, BATCH_SIZE, BACKEND,
#: PIPELINE, COMPILE and ENGINE are left out: they compute the same outputs.
OUTPUT_KEYS = (
    "WEIGHTS", "WEIGHTS_FILE", "INPUT_SIZE", "FACE_CHANNEL", "PRE_NORMALIZE", "PRECISION", "MASK_THRESHOLD",
    "POSTPROCESS", "DILATE", "FEATHER", "HEATMAP_FORMAT", "OVERLAY", "CUTOUT", "CROP", "BOXES", "PER_FACE",
    "MIN_FACE_SCORE",
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

    from .pipeline.atomic import save_atomic

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
    _write_failure_log(cfg, plan.out_dir, plan.root, [])  # clears a log of an earlier run
    print(
        f"face_segmentation_pytorch: all {_plural(len(plan.images), 'image')} already have their outputs; "
        "nothing to do (OVERWRITE=true redoes them)",
        file=sys.stderr,
    )
    return True


def start_line(cfg: dict, plan: Plan, weights_source, device, input_size) -> str:
    """The first line a run prints: inputs, weights, device, precision, input size."""
    return (
        f"face_segmentation_pytorch: {_plural(len(plan.images), 'image')} from {cfg['IMGS_DIR']}"
        + (f", {plan.skipped} already done (OVERWRITE=true redoes them)" if plan.skipped else "")
        + f"; weights {weights_source}, device {device}"
        + (" (ONNX Runtime)" if cfg["BACKEND"] == "onnxruntime" else "")
        + (f", precision {cfg['PRECISION']}" if cfg["PRECISION"] != "fp32" else "")
        + f", input size {input_size or 'native'}"
    )


def _run(cfg: dict, created: list[Path]) -> int:
    from .pipeline.atomic import save_atomic
    from .pipeline.progress import progress_bar
    from .pipeline.workers import (
        BrokenProcessPool,
        Job,
        ProcessWorkers,
        ThreadWorkers,
        choose_pipeline,
        default_workers,
    )

    out_dir = check_settings(cfg)
    # ONNX Runtime runs on the CPU: without DEVICE it does not pick CUDA.
    device = _resolve_device(cfg["DEVICE"] if cfg["BACKEND"] != "onnxruntime" else cfg["DEVICE"] or "cpu")
    plan = plan_run(cfg, out_dir, created)
    if nothing_to_do(cfg, plan):
        return 0
    images, root, missing, kinds, stems = plan.images, plan.root, plan.missing, plan.kinds, plan.stems
    todo, skipped, user_boxes = plan.todo, plan.skipped, plan.user_boxes
    pipeline = choose_pipeline(cfg["PIPELINE"], device.type)
    n_workers = default_workers(pipeline) if cfg["WORKERS"] == _AUTO else cfg["WORKERS"]
    # Worker processes start before the weights load, so the two overlap.
    workers = (ProcessWorkers if pipeline == "processes" else ThreadWorkers)(n_workers)
    try:
        segmenter = make_segmenter(cfg, device, progress=cfg["PROGRESS"])
        record_settings(plan)
    except BaseException:
        workers.shutdown()
        raise
    print(
        start_line(cfg, plan, segmenter.weights_source, device, segmenter.input_size)
        + f"; images read and written by {n_workers} worker process{'es' * (n_workers > 1)}" * (pipeline == "processes"),
        file=sys.stderr,
    )

    cropping = cfg["CROP"] is not None or user_boxes is not None
    masks_only = cfg["MASK_THRESHOLD"] is not None  # then no output shows the probabilities
    no_face: list[Path] = []
    failures: list[tuple[Path, str, str]] = [(p, "read", r) for p, r in missing]
    gallery_rows: list = []
    gallery_asked = 0
    done = 0
    bs = cfg["BATCH_SIZE"]
    batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
    job = Job(
        segmenter.preparer, segmenter.assembler, kinds, per_face=cfg["PER_FACE"],
        max_image_pixels=cfg["MAX_IMAGE_PIXELS"],
    )
    workers.bind(job)

    def items(batch: list[int]):
        return [(i, images[i], user_boxes[i] if user_boxes is not None else None) for i in batch]

    interrupted = False
    finished: set[int] = set()  # images done or failed
    sent = 0  # batches of the current pump() whose reads were submitted
    any_read = False  # a worker has returned something: they can start
    start = time.perf_counter()
    bar = progress_bar(len(todo), desc="segmenting", unit="img", enabled=cfg["PROGRESS"])

    def fail(i: int, stage: str, reason: str) -> None:
        failures.append((images[i], stage, reason))
        finished.add(i)
        bar.update(1)

    def succeed(i: int) -> None:
        nonlocal done
        done += 1
        finished.add(i)
        bar.update(1)

    def outputs_exist(i: int) -> bool:
        return all(stems[i].with_name(stems[i].name + k).exists() for k in kinds)

    def pump(batch_list: list[list[int]]) -> None:
        """Read, run and write these batches, the three overlapping.

        Reading runs a few batches ahead of the network and writing behind it,
        in the workers. On CUDA the device computes batch k while this process
        takes batch k+1 from the readers and launches it; only then does it
        wait for batch k's maps. A broken process pool propagates (the caller
        sorts out what was finished); Ctrl-C lets the writes in flight finish.
        """
        nonlocal sent, any_read
        reads: deque[tuple[list[int], Future]] = deque()
        writes: deque[tuple[int, Future]] = deque()
        launched = None  # (images, their Prepared, PendingMaps): on the device, not yet collected
        sent = 0

        def submit_read() -> None:
            nonlocal sent
            reads.append((batch_list[sent], workers.read(items(batch_list[sent]))))
            sent += 1

        def finish_writes(limit: int) -> None:
            # Bound the results held in memory; collect write failures in order.
            while len(writes) > limit:
                i, fut = writes[0]
                written = workers.result(fut)  # BrokenProcessPool propagates
                writes.popleft()
                if written.gallery_row is not None:
                    gallery_rows.append(written.gallery_row)
                if written.failure is not None:
                    fail(i, *written.failure)
                else:
                    succeed(i)

        def collect(batch) -> None:
            # The launched batch's maps (waits for the device), then its writes.
            nonlocal gallery_asked
            ids, prepared, pending = batch
            try:
                per_image = segmenter.split_maps(prepared, pending.result())
            except (RuntimeError, ValueError) as e:
                for i in ids:
                    fail(i, "inference", _first_line(e))
                return
            for i, p, maps in zip(ids, prepared, per_image):
                if cropping and not p.faces:
                    no_face.append(images[i])
                row = bool(cfg["GALLERY"]) and gallery_asked < 16
                gallery_asked += row
                writes.append((i, workers.write(stems[i], p, maps, row)))
            finish_writes(2 * bs * n_workers)

        try:
            ahead = max(2, n_workers)
            while sent < len(batch_list) and len(reads) < ahead:
                submit_read()
            while reads or launched is not None:
                current = None
                if reads:
                    loaded = workers.result(reads[0][1])
                    any_read = True
                    reads.popleft()
                    if sent < len(batch_list):
                        submit_read()
                    ok = []
                    for i, item in loaded:
                        if isinstance(item, tuple):
                            fail(i, *item)
                        else:
                            ok.append((i, item))
                    if ok:
                        prepared = [p for _, p in ok]
                        try:
                            # Mask outputs need no probabilities: threshold on the device.
                            current = ([i for i, _ in ok], prepared, segmenter.start(prepared, masks_only=masks_only))
                        except (RuntimeError, ValueError) as e:
                            for i, _ in ok:
                                fail(i, "inference", _first_line(e))
                if launched is not None:
                    collect(launched)
                launched = None
                if current is not None and not current[2].asynchronous:
                    collect(current)  # the CPU has computed it already: write it now
                else:
                    launched = current
            finish_writes(0)
        except KeyboardInterrupt:
            for _, fut in reads:
                fut.cancel()
            # Writes in flight finish (each is atomic), so what is on disk is whole.
            try:
                finish_writes(0)
            except (KeyboardInterrupt, BrokenProcessPool):
                pass
            raise

    def new_workers():
        w = (ProcessWorkers if pipeline == "processes" else ThreadWorkers)(n_workers)
        w.bind(job)
        return w

    def remove_partials(i: int) -> None:
        # Temporary files of a worker that died while writing (the pool's other
        # workers are gone too, so nothing else is writing them).
        stem = stems[i]
        patterns = [f".{glob.escape(stem.name + k)}.*.partial" for k in kinds]
        patterns.append(f".{glob.escape(stem.name)}__face[0-9]*__mask.png.*.partial")
        for pattern in patterns:
            for tmp in stem.parent.glob(pattern):
                tmp.unlink(missing_ok=True)

    try:
        remaining = batches
        while remaining:
            try:
                pump(remaining)
                break
            except BrokenProcessPool:
                pass
            # A worker process died (killed, out of memory, a crash in a
            # decoder): every image that was in flight is read, run and written
            # again one at a time in a new pool, so one that kills its worker
            # again is found and reported, and the rest are not lost.
            workers.shutdown()
            if not any_read:
                # Not an image's fault: they cannot run here (out of memory while
                # importing torch, a broken environment; their errors are above).
                raise ConfigError(
                    "PIPELINE=processes: the worker processes died before reading any image (see the lines "
                    "above); add PIPELINE=threads to read and write images in this process"
                ) from None
            in_flight, remaining = remaining[:sent], remaining[sent:]
            unfinished = [i for b in in_flight for i in b if i not in finished]
            for i in unfinished:
                remove_partials(i)
            print(
                f"face_segmentation_pytorch: a worker process died; retrying its {_plural(len(unfinished), 'image')} "
                "one at a time",
                file=sys.stderr,
            )
            workers = new_workers()
            for i in unfinished:
                try:
                    pump([[i]])
                except BrokenProcessPool:
                    workers.shutdown()
                    remove_partials(i)
                    if i not in finished and outputs_exist(i):
                        succeed(i)  # written before its worker died; only the report was lost
                    elif i not in finished:
                        fail(i, "worker", "a worker process died on this image twice (a crash while decoding it, or out of memory?)")
                    workers = new_workers()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        workers.shutdown()
        bar.close()
    elapsed = time.perf_counter() - start

    if gallery_rows:
        from .pipeline.render import gallery

        try:
            pic = gallery(gallery_rows, headers=("image", "overlay", "mask" if cfg["MASK_THRESHOLD"] else "heatmap"))
            buf = io.BytesIO()
            fmt = "JPEG" if cfg["GALLERY"].lower().endswith((".jpg", ".jpeg")) else "PNG"
            pic.save(buf, format=fmt, quality=90)
            save_atomic(Path(cfg["GALLERY"]), lambda f: f.write(buf.getvalue()))
        except (OSError, ValueError) as e:
            failures.append((Path(cfg["GALLERY"]), "gallery", _first_line(e)))

    for path in no_face:
        print(f"no face: {path} (empty outputs written)", file=sys.stderr)
    for path, stage, reason in failures:
        msg = reason if reason.startswith(str(path)) else f"{path}: {reason}"
        print(f"failed ({stage}): {msg}", file=sys.stderr)
    log = _write_failure_log(cfg, out_dir, root, failures)
    summary = (
        "face_segmentation_pytorch: "
        + ("interrupted; " if interrupted else "")
        + f"{_plural(done, 'image')} done, {len(failures)} failed, "
        f"{skipped} skipped (outputs exist)"
        + (f", {len(no_face)} without a face" if cropping else "")
        # A rate only where something was processed; "0.00 images/s" says nothing.
        + (f", {done / elapsed:.2f} images/s" if done and elapsed > 0 else "")
        + (f"; failures listed in {log}" if log is not None else "")
        + ("; run the same command again to resume" if interrupted else "")
    )
    print(summary, file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failures else 0


def _gallery_row(path: Path, seg):
    import numpy as np
    from PIL import Image

    from .pipeline.render import heatmap_to_png_array, overlay

    shown = seg.alpha if seg.alpha is not None else seg.mask if seg.mask is not None else seg.pmap
    thumb = seg.image.copy()
    thumb.thumbnail((512, 512))
    small = Image.fromarray(heatmap_to_png_array(shown.astype(np.float32), 8)).resize(thumb.size, Image.BILINEAR)
    return (path.name, [thumb, overlay(thumb, np.asarray(small, np.float32) / 255.0), small])


def _write_failure_log(cfg: dict, out_dir: Path | None, root: Path, failures) -> Path | None:
    from .pipeline.atomic import save_atomic

    setting = cfg["FAILURE_LOG"]
    if setting is None:
        return None
    path = Path(setting).expanduser() if setting != _AUTO else (out_dir or root) / FAILURE_LOG_NAME
    if not failures:
        if setting == _AUTO and path.is_file():
            path.unlink()  # a log of an earlier run; this run has no failures
        return None
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "stage", "reason"])
    for p, stage, reason in failures:
        # The path has its own column; the reason need not repeat it.
        prefix = f"{p}: "
        w.writerow([str(p), stage, reason[len(prefix):] if reason.startswith(prefix) else reason])
    try:
        save_atomic(path, lambda f: f.write(buf.getvalue().encode("utf-8")))
    except OSError as e:
        print(f"warning: cannot write the failure log {path}: {e.strerror or e}", file=sys.stderr)
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (``errors.EXIT_STATUSES``)."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned worker process is importing a script that runs the command at
        # import (no main guard): running it again here would start workers of
        # workers. The worker goes on with its own job once the import ends.
        print(
            "warning: a worker process imported a script that calls face_segmentation_pytorch.cli.main() "
            "at import; put the call under if __name__ == '__main__': (the run goes on)",
            file=sys.stderr,
        )
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(
        argv, help_text, lambda: run(parse_args(argv)),
        "face_segmentation_pytorch: interrupted before any image was processed",
    )
