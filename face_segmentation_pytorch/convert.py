"""Convert a caffemodel once: ``python -m face_segmentation_pytorch.convert IN.caffemodel OUT.pt``.

Writes a state_dict that loads into :class:`FaceSegmentationNet` with
``strict=True`` (``torch.save`` format for ``.pt``/``.pth``, safetensors for
``.safetensors``; ``--safetensors`` writes both). Outputs are written under a
temporary name and renamed, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import FaceSegmentationError

__all__ = ["main", "save_state_dict"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face_segmentation_pytorch.convert",
        description="Convert a face segmentation caffemodel to a PyTorch state_dict (no Caffe needed).",
    )
    parser.add_argument("caffemodel", help="input .caffemodel (binary)")
    parser.add_argument("output", help="output .pt, .pth or .safetensors")
    parser.add_argument(
        "--safetensors", action="store_true", help="also write a .safetensors file beside a .pt output"
    )
    parser.add_argument(
        "--no-strict", action="store_true", help="ignore layers with weights that the network does not have"
    )
    args = parser.parse_args(argv)
    from .formats.caffe import convert_caffemodel

    try:
        t0 = time.perf_counter()
        state, report = convert_caffemodel(args.caffemodel, strict=not args.no_strict)
        t1 = time.perf_counter()
        for line in report.lines():
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
