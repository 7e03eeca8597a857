"""Command line: ``python -m face_segmentation_pytorch KEY=VALUE ...``.

Keys are omegaconf dot-list style (``IMGS_DIR=photos MASK_THRESHOLD=0.5``).
User mistakes end with one ``error:`` line and exit status 2; images that
fail to read or write are listed at the end and make the exit status 1.
"""

from __future__ import annotations

import difflib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, FaceSegmentationError, ImageReadError

__all__ = ["main", "parse_args", "KEYS"]


@dataclass(frozen=True)
class Key:
    default: object
    help: str


_AUTO = "auto"

KEYS: dict[str, Key] = {
    "IMGS_DIR": Key(None, "folder of input images (required)"),
    "MODEL_PARAMS_DIR": Key(
        None,
        "folder with face_seg_fcn8s.pt / .safetensors / .caffemodel; downloaded there when "
        "missing; null: $FACE_SEGMENTATION_PYTORCH_HOME or ~/.cache/face_segmentation_pytorch",
    ),
    "OUT_DIR": Key(
        None,
        "write <stem>__heatmap.png here, mirroring sub-folders; null: write "
        "<image file name>__heatmap.png next to each image",
    ),
    "DEVICE": Key(None, "cpu, cuda or cuda:N; null: cuda when available, else cpu"),
    "BATCH_SIZE": Key(1, "images per forward pass"),
    "MASK_THRESHOLD": Key(
        None, "null: write heatmaps; a number in (0, 1): write 0/255 masks (__mask.png)"
    ),
    "INPUT_SIZE": Key(
        _AUTO,
        "auto: resize to the weights' input size (500 or 300) like the original tool; "
        "an int: resize to that square size; null: run at native size",
    ),
    "WEIGHTS": Key("fcn8s_500", "which published weights: fcn8s_500, fcn8s_300_no_aug, fcn8s_500_port"),
    "WEIGHTS_URL": Key(None, "download the weights archive from this URL instead"),
    "WEIGHTS_SHA256": Key(None, "expected sha256 of the downloaded archive"),
    "FACE_CHANNEL": Key(
        None,
        "null: face = best non-background channel (authors' demo); an int: compare that "
        "channel with background only (15 reproduces the authors' C++ tool)",
    ),
    "RECURSIVE": Key(False, "also read images in sub-folders of IMGS_DIR"),
    "PRE_NORMALIZE": Key(False, "stretch each image to 0..255 first (the original tool does not)"),
    "MAX_IMAGE_PIXELS": Key(None, "raise Pillow's decompression-bomb limit (pixels); null: Pillow's default"),
    "PROGRESS": Key(True, "show progress bars on stderr"),
}

_STRING_KEYS = ("IMGS_DIR", "MODEL_PARAMS_DIR", "OUT_DIR", "DEVICE", "WEIGHTS", "WEIGHTS_URL", "WEIGHTS_SHA256")

USAGE = "usage: python -m face_segmentation_pytorch IMGS_DIR=<folder> [KEY=VALUE ...]"


def help_text() -> str:
    lines = [USAGE, "", "Segment faces in every image of a folder.", "", "keys (default, meaning):"]
    for name, key in KEYS.items():
        default = "null" if key.default is None else str(key.default).lower() if isinstance(key.default, bool) else key.default
        lines.append(f"  {name}={default}")
        lines.append(f"      {key.help}")
    lines += [
        "",
        "example: python -m face_segmentation_pytorch MODEL_PARAMS_DIR=weights IMGS_DIR=photos MASK_THRESHOLD=0.5",
    ]
    return "\n".join(lines)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_args(argv: list[str]) -> dict:
    """Parse ``KEY=VALUE`` arguments into a validated config dict.

    Raises:
        ConfigError: Unknown key (with a suggestion), malformed argument or
            invalid value.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not KEY=VALUE; {USAGE}")
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(list(argv)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse arguments: {str(e).splitlines()[0]}") from None
    raw = dict(arg.split("=", 1) for arg in argv)
    cfg = {name: key.default for name, key in KEYS.items()}
    for name, value in given.items():
        if name not in KEYS:
            close = difflib.get_close_matches(name.upper(), KEYS, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see --help"
            raise ConfigError(f"unknown key {name!r}{hint}")
        if name in _STRING_KEYS and name in raw:
            # Paths, URLs and hashes keep their text: YAML would read an
            # all-digit hash as a number and "~" or "yes" as something else.
            text = raw[name].strip()
            value = None if text in ("", "null", "None") else text
        cfg[name] = value

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: {what}")

    need(cfg["IMGS_DIR"] is not None, "IMGS_DIR", "give the folder of images, e.g. IMGS_DIR=photos")
    need(_is_int(cfg["BATCH_SIZE"]) and cfg["BATCH_SIZE"] >= 1, "BATCH_SIZE", "expected an integer >= 1")
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
    for name in ("RECURSIVE", "PRE_NORMALIZE", "PROGRESS"):
        need(isinstance(cfg[name], bool), name, "expected true or false")
    mp = cfg["MAX_IMAGE_PIXELS"]
    need(mp is None or (_is_int(mp) and mp > 0), "MAX_IMAGE_PIXELS", "expected a positive integer")
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


def _resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"DEVICE={name!r} is invalid: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"DEVICE={name} asked for CUDA, but this torch ({torch.__version__}) sees no CUDA "
                "device; use DEVICE=cpu, or install a CUDA build of torch (requirements-gpu.txt)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"DEVICE={name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise ConfigError(f"DEVICE={name!r} is not supported: use cpu or cuda")
    return device


def _output_paths(images: list[Path], imgs_dir: Path, out_dir: Path | None, suffix: str) -> list[Path]:
    """Where each image's output goes; same-stem images in one folder keep their extension."""
    if out_dir is None:
        return [p.with_name(p.name + suffix) for p in images]
    rel = [p.relative_to(imgs_dir) for p in images]
    stems: dict[Path, int] = {}
    for r in rel:
        key = r.parent / r.stem.lower()
        stems[key] = stems.get(key, 0) + 1
    out = []
    for r in rel:
        # <stem>__heatmap.png unless another image in the folder has the same
        # stem (a.jpg and a.png): those keep their full name, so none overwrites another.
        name = r.stem if stems[r.parent / r.stem.lower()] == 1 else r.name
        out.append(out_dir / r.parent / (name + suffix))
    return out


def run(cfg: dict) -> int:
    """Run the batch job described by a parsed config. Returns the exit status."""
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from .imageio import find_images, load_image, save_png_atomic
    from .inference import pmap_to_mask, pmap_to_uint8, predict_pmaps
    from .model import FaceSegmentationNet
    from .weights import find_or_download_state_dict, weights_for

    imgs_dir = Path(cfg["IMGS_DIR"]).expanduser()
    if not imgs_dir.is_dir():
        raise ConfigError(
            f"IMGS_DIR={imgs_dir}: {'is not a folder' if imgs_dir.exists() else 'no such folder'}; "
            "give the folder that holds the images"
        )
    out_dir = Path(cfg["OUT_DIR"]).expanduser() if cfg["OUT_DIR"] else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"OUT_DIR={out_dir}: is a file; give a folder")
    if cfg["MAX_IMAGE_PIXELS"] is not None:
        Image.MAX_IMAGE_PIXELS = cfg["MAX_IMAGE_PIXELS"]
    device = _resolve_device(cfg["DEVICE"])

    images, skipped = find_images(imgs_dir, recursive=cfg["RECURSIVE"])
    if not images:
        raise ConfigError(
            f"IMGS_DIR={imgs_dir}: no image files found"
            + (f" ({skipped} other files skipped)" if skipped else "")
            + ("" if cfg["RECURSIVE"] else "; add RECURSIVE=true to look in sub-folders")
        )
    threshold = cfg["MASK_THRESHOLD"]
    suffix = "__heatmap.png" if threshold is None else "__mask.png"
    outputs = _output_paths(images, imgs_dir, out_dir, suffix)

    state, source = find_or_download_state_dict(
        cfg["MODEL_PARAMS_DIR"],
        weights=cfg["WEIGHTS"],
        url=cfg["WEIGHTS_URL"],
        sha256=cfg["WEIGHTS_SHA256"],
        progress=cfg["PROGRESS"],
    )
    entry = weights_for(state, cfg["WEIGHTS"])
    model = FaceSegmentationNet.from_state_dict(
        state, input_size=entry.input_size, mean_bgr=entry.mean_bgr
    )
    del state
    model = model.to(device).eval()
    fc = cfg["FACE_CHANNEL"]
    if fc is not None and fc >= model.num_classes:
        raise ConfigError(
            f"FACE_CHANNEL={fc} is invalid: the weights have {model.num_classes} channels "
            f"(use 1..{model.num_classes - 1}; the C++ tool uses {entry.cpp_face_channel})"
        )
    input_size = entry.input_size if cfg["INPUT_SIZE"] == _AUTO else cfg["INPUT_SIZE"]
    print(
        f"face_segmentation_pytorch: {len(images)} images from {imgs_dir}, weights {source}, "
        f"device {device}, input size {input_size or 'native'}",
        file=sys.stderr,
    )

    failures: list[tuple[Path, str]] = []
    done = 0
    bs = cfg["BATCH_SIZE"]
    batches = [list(range(i, min(i + bs, len(images)))) for i in range(0, len(images), bs)]

    def read(idx: list[int]):
        loaded = []
        for i in idx:
            try:
                loaded.append((i, load_image(images[i])))
            except ImageReadError as e:
                loaded.append((i, e))
        return loaded

    start = time.perf_counter()
    bar = tqdm(total=len(images), unit="img", disable=not cfg["PROGRESS"], file=sys.stderr)
    # Decoding the next batch overlaps with the forward pass of this one.
    with ThreadPoolExecutor(max_workers=1) as pool, bar:
        pending = pool.submit(read, batches[0]) if batches else None
        for b in range(len(batches)):
            loaded = pending.result()
            pending = pool.submit(read, batches[b + 1]) if b + 1 < len(batches) else None
            ok = []
            for i, item in loaded:
                if isinstance(item, ImageReadError):
                    failures.append((images[i], str(item)))
                else:
                    ok.append((i, item))
            if ok:
                try:
                    pmaps = predict_pmaps(
                        model,
                        [img for _, img in ok],
                        input_size=input_size,
                        face_channel=fc,
                        pre_normalize=cfg["PRE_NORMALIZE"],
                    )
                except (RuntimeError, ValueError) as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    for i, _ in ok:
                        failures.append((images[i], f"inference failed: {reason}"))
                    pmaps = []
                for (i, _), pmap in zip(ok, pmaps):
                    out = pmap_to_uint8(pmap) if threshold is None else pmap_to_mask(pmap, threshold)
                    try:
                        save_png_atomic(out, outputs[i])
                        done += 1
                    except OSError as e:
                        failures.append((images[i], f"cannot write {outputs[i]}: {e.strerror or e}"))
            bar.update(len(batches[b]))
    elapsed = time.perf_counter() - start
    for path, reason in failures:
        msg = reason if reason.startswith(str(path)) else f"{path}: {reason}"
        print(f"failed: {msg}", file=sys.stderr)
    rate = done / elapsed if elapsed > 0 else 0.0
    print(
        f"face_segmentation_pytorch: {done} images done, {len(failures)} failed, "
        f"{rate:.2f} images/s",
        file=sys.stderr,
    )
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text())
        return 0
    try:
        return run(parse_args(argv))
    except FaceSegmentationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
