"""Convert foreign weights once: ``python -m face_segmentation_pytorch.convert IN OUT.pt``.

``IN`` is either

* a ``.caffemodel`` of the FCN-8s network: the output loads into
  :class:`~face_segmentation_pytorch.models.fcn8s.FaceSegmentationNet`, or
* a OneFlow LinkNet34 checkpoint, as a folder (eager ``flow.save`` or lazy
  ``CheckPoint.save`` layout, or a folder holding one) or a ``.zip`` of it:
  the output loads into :class:`~face_segmentation_pytorch.models.linknet.LinkNet34`.

Both with ``strict=True``. The output is a ``torch.save`` state_dict for
``.pt``/``.pth`` and safetensors for ``.safetensors``; ``--safetensors``
writes both. Outputs are written under a temporary name and renamed, so a
failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import FaceSegmentationError

__all__ = ["main", "save_state_dict", "is_oneflow_source"]


def save_state_dict(state_dict, path: str | os.PathLike) -> Path:
    """Save a state_dict atomically; the format follows the file extension."""
    import torch

    from .pipeline.atomic import atomic_path

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
    """``(state_dict, report lines)`` of a caffemodel or a OneFlow checkpoint."""
    if is_oneflow_source(path):
        from .formats.oneflow import read_oneflow_checkpoint

        state, report = read_oneflow_checkpoint(path, strict=strict)
    else:
        from .formats.caffe import convert_caffemodel

        state, report = convert_caffemodel(path, strict=strict)
    return state, report.lines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face_segmentation_pytorch.convert",
        description=(
            "Convert face segmentation weights to a PyTorch state_dict: an FCN-8s .caffemodel "
            "(no Caffe needed) or a OneFlow LinkNet34 checkpoint folder or .zip (no OneFlow needed)."
        ),
    )
    parser.add_argument(
        "source", metavar="input", help="input .caffemodel (binary), or OneFlow checkpoint folder or .zip"
    )
    parser.add_argument("output", help="output .pt, .pth or .safetensors")
    parser.add_argument(
        "--safetensors", action="store_true", help="also write a .safetensors file beside a .pt output"
    )
    parser.add_argument(
        "--no-strict",
        action="store_true",
        help="ignore layers (or checkpoint entries) with weights that the network does not have",
    )
    args = parser.parse_args(argv)

    try:
        t0 = time.perf_counter()
        state, lines = _read_source(args.source, strict=not args.no_strict)
        t1 = time.perf_counter()
        for line in lines:
            print(line)
        n = sum(v.numel() for v in state.values())
        print(f"parsed {n:,} parameters in {t1 - t0:.2f} s")
        outputs = [Path(args.output)]
        if args.safetensors and outputs[0].suffix.lower() != ".safetensors":
            outputs.append(outputs[0].with_suffix(".safetensors"))
        for out in outputs:
            save_state_dict(state, out)
            print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    except FaceSegmentationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
