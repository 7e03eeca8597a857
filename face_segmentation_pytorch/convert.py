"""Convert foreign weights once: ``python -m face_segmentation_pytorch.convert SOURCE=IN OUT=OUT.pt``.

``SOURCE`` is either

* a ``.caffemodel`` of the FCN-8s network: the output loads into
  :class:`~face_segmentation_pytorch.models.fcn8s.FaceSegmentationNet`, or
* a OneFlow LinkNet34 checkpoint, as a folder (eager ``flow.save`` or lazy
  ``CheckPoint.save`` layout, or a folder holding one) or a ``.zip`` of it:
  the output loads into :class:`~face_segmentation_pytorch.models.linknet.LinkNet34`.

Both with ``strict=True``. ``OUT`` is a ``torch.save`` state_dict for
``.pt``/``.pth`` and safetensors for ``.safetensors`` (any other suffix is
refused: nothing else can be written); ``SAFETENSORS=true`` writes both.
Outputs are written under a temporary name and renamed, so a failed run
leaves nothing behind. The older form ``convert IN OUT [--safetensors]
[--no-strict]`` still works, alone or mixed with keys.

Exit status: 0 written, 2 a mistake in the command, 3 ``SOURCE`` cannot be
read as weights (truncated, corrupt or foreign), as every command's
:data:`~face_segmentation_pytorch.errors.EXIT_STATUSES` say.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import EXIT_STATUSES as _COMMON_STATUSES
from .errors import (
    CaffeModelError,
    ConfigError,
    FaceSegmentationError,
    WeightsError,
    run_command,
)
from .keys import FlagParser, Key, parse_keys_and_flags

__all__ = ["main", "parse_args", "save_state_dict", "is_oneflow_source", "parse_keys_and_flags", "KEYS"]

PROG = "python -m face_segmentation_pytorch.convert"
USAGE = f"usage: {PROG} SOURCE=<model.caffemodel, OneFlow folder or .zip> OUT=<weights.pt> [KEY=VALUE ...]"
#: What ``save_state_dict`` can write.
OUTPUT_SUFFIXES = (".pt", ".pth", ".safetensors")

KEYS: dict[str, Key] = {
    "SOURCE": Key(
        None,
        "the weights to convert (required): an FCN-8s .caffemodel (binary, not the .prototxt), or a "
        "OneFlow LinkNet34 checkpoint folder or its .zip",
    ),
    "OUT": Key(
        None,
        "the file to write (required): .pt or .pth (a torch.save state_dict) or .safetensors; name it as "
        "the weights are looked for (face_seg_fcn8s.pt, linknet_oneflow_model.pt) in your MODEL_PARAMS_DIR",
    ),
    "SAFETENSORS": Key(False, "also write a .safetensors file beside a .pt / .pth OUT (older flag: --safetensors)"),
    "STRICT": Key(
        True,
        "refuse layers (or checkpoint entries) with weights the network does not have; false: ignore "
        "them (older flag: --no-strict)",
    ),
}
_STRING_KEYS = ("SOURCE", "OUT")

#: This command's exit statuses (``--help`` lists them).
EXIT_STATUSES = {
    0: "OUT was written (and its .safetensors twin with SAFETENSORS=true)",
    2: _COMMON_STATUSES[2],
    3: "SOURCE cannot be read as weights of either network (truncated, corrupt or foreign); nothing was written",
    130: "interrupted (Ctrl-C); no partly written file is left",
}


# KEY=VALUE arguments: a bare name, then '='. Paths with '=' after a '/' stay positional.
def help_text() -> str:
    """The ``--help`` text, in the style of every command's."""
    from .keys import help_text as keys_help_text

    return keys_help_text(
        USAGE,
        "Convert face segmentation weights to a PyTorch state_dict: an FCN-8s .caffemodel (no Caffe "
        "needed) or a OneFlow LinkNet34 checkpoint folder or .zip (no OneFlow needed). The older form "
        f"{PROG} SOURCE OUT [--safetensors] [--no-strict] still works. Also installed as "
        "face-segmentation-convert.",
        KEYS,
        f"{PROG} SOURCE=face_seg_fcn8s.caffemodel OUT=weights/face_seg_fcn8s.pt SAFETENSORS=true",
        EXIT_STATUSES,
    )


def _flag_parser() -> FlagParser:
    """The older form: ``IN OUT [--safetensors] [--no-strict]``."""
    p = FlagParser(USAGE, prog=PROG)
    p.add_argument("source", nargs="?")
    p.add_argument("output", nargs="?")
    p.add_argument("--safetensors", action="store_const", const=True)
    p.add_argument("--no-strict", dest="strict", action="store_const", const=False)
    return p


def parse_args(argv: Sequence[str]) -> dict:
    """Parse and check the arguments into ``{key: value}``.

    Raises:
        ConfigError: A missing, unknown or invalid key, or an OUT this command cannot write.
    """
    cfg = parse_keys_and_flags(
        argv,
        KEYS,
        _STRING_KEYS,
        USAGE,
        _flag_parser(),
        {"source": "SOURCE", "output": "OUT", "safetensors": "SAFETENSORS", "strict": "STRICT"},
    )
    for name, example in (("SOURCE", "SOURCE=face_seg_fcn8s.caffemodel"), ("OUT", "OUT=weights/face_seg_fcn8s.pt")):
        if cfg[name] is None:
            raise ConfigError(f"{name} is required, e.g. {example}; {USAGE}")
    for name in ("SAFETENSORS", "STRICT"):
        if not isinstance(cfg[name], bool):
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: expected true or false")
    check_output_suffix(cfg["OUT"])
    if not os.path.exists(os.path.expanduser(cfg["SOURCE"])):
        raise ConfigError(
            f"SOURCE={cfg['SOURCE']}: no such file or folder; give the .caffemodel or the OneFlow checkpoint"
        )
    return cfg


def check_output_suffix(out: str) -> None:
    """Refuse an OUT the converter cannot write (it would get a torch file under a foreign name).

    Raises:
        ConfigError: Naming OUT, the suffixes it can write and, for ``.onnx``, the export command.
    """
    suffix = Path(out).suffix.lower()
    if suffix in OUTPUT_SUFFIXES:
        return
    what = f"not {suffix}" if suffix else "and this name has no suffix"
    onnx = (
        "; for ONNX, convert to .pt, then python -m face_segmentation_pytorch.export OUT=<name>.onnx "
        "WEIGHTS_FILE=<name>.pt"
        if suffix == ".onnx"
        else ""
    )
    raise ConfigError(f"OUT={out}: the converter writes .pt, .pth (torch.save) or .safetensors, {what}{onnx}")


def save_state_dict(state_dict, path: str | os.PathLike) -> Path:
    """Save a state_dict atomically; the format follows the file extension."""
    import torch

    from .files.atomic import atomic_path

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise FaceSegmentationError(
                f"{path}: writing .safetensors needs the safetensors package; pip install safetensors"
            ) from None
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp)
    else:
        with atomic_path(path) as tmp:
            torch.save(dict(state_dict), tmp)
    return path


def is_oneflow_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a OneFlow checkpoint (a folder or a ``.zip``) rather than a caffemodel."""
    return os.path.isdir(path) or Path(path).suffix.lower() == ".zip"


def _read_source(path: str, strict: bool):
    """``(state_dict, report lines)`` of a caffemodel or a OneFlow checkpoint.

    Raises:
        WeightsError: The source is truncated, corrupt or of another network (exit status 3,
            as for any weights file that cannot be loaded).
    """
    if is_oneflow_source(path):
        from .formats.oneflow import read_oneflow_checkpoint

        state, report = read_oneflow_checkpoint(path, strict=strict)  # raises WeightsErrors
    else:
        from .formats.caffe import convert_caffemodel

        try:
            state, report = convert_caffemodel(path, strict=strict)
        except CaffeModelError as e:
            raise WeightsError(str(e)) from None
    return state, report.lines()


def lookup_note(state, out: Path) -> str | None:
    """A line saying what name the weights lookup would find ``out`` under, when it would not
    find it as it is named (``None`` when it would, or the state fits no entry)."""
    from .weights.families import family_of_state_dict
    from .weights.registry import DEFAULT_FOR_FAMILY, weights_for

    try:
        entry = weights_for(state, DEFAULT_FOR_FAMILY[family_of_state_dict(state, str(out)).name])
    except (FaceSegmentationError, KeyError):
        return None
    if out.name in {c.name for c in entry.local_candidates(out.parent)}:
        return None
    suffix = ".safetensors" if out.suffix.lower() == ".safetensors" else ".pt"
    return (
        f"note: the weights lookup does not look for {out.name}: name it {entry.local_stem}{suffix} in your "
        f"MODEL_PARAMS_DIR (WEIGHTS={entry.name}), or run it with WEIGHTS_FILE={out}"
    )


def run(cfg: dict) -> int:
    """Convert ``cfg["SOURCE"]`` and write ``cfg["OUT"]`` (and its ``.safetensors`` twin)."""
    source = os.path.expanduser(cfg["SOURCE"])
    t0 = time.perf_counter()
    state, lines = _read_source(source, strict=cfg["STRICT"])
    t1 = time.perf_counter()
    for line in lines:
        print(line)
    n = sum(v.numel() for v in state.values())
    print(f"parsed {n:,} parameters in {t1 - t0:.2f} s")
    outputs = [Path(os.path.expanduser(cfg["OUT"]))]
    if cfg["SAFETENSORS"] and outputs[0].suffix.lower() != ".safetensors":
        outputs.append(outputs[0].with_suffix(".safetensors"))
    for out in outputs:
        save_state_dict(state, out)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    note = lookup_note(state, outputs[0])
    if note:
        print(note)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``face-segmentation-convert``); returns the exit status (:data:`EXIT_STATUSES`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    interrupted = "face_segmentation_pytorch.convert: interrupted (no partly written file is left)"
    return run_command(argv, help_text, lambda: run(parse_args(argv)), interrupted)


if __name__ == "__main__":
    sys.exit(main())
