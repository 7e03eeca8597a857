"""Export the network to ONNX: ``python -m face_segmentation_pytorch.export OUT.onnx``.

The graph takes ``data`` (N, 3, H, W), BGR minus the mean, with N, H and W
dynamic, and returns Caffe's ``score`` blob (N, C, H, W). It is the dense
network (the constant-padding shortcut is PyTorch-side Python); ``--check``
runs it in ONNX Runtime against PyTorch and prints the relative error.
Needs the ``[onnx]`` extra: onnx, onnxscript (the exporter), onnxruntime (the check).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import FaceSegmentationError
from .pipeline.atomic import atomic_path
from .models.fcn8s import FaceSegmentationNet

__all__ = ["export_onnx", "check_onnx", "main"]

_EXTRA = "ONNX export needs the onnx extra: pip install 'face_segmentation_pytorch[onnx]' (onnx, onnxscript, onnxruntime)"


@contextlib.contextmanager
def _quiet_exporter_logs():
    """Keep the exporter's notes about absent optional libraries out of our output.

    torch's ONNX exporter logs "torchvision is not installed. Skipping
    torchvision::nms" (and three more) at WARNING on every export; this network
    has no torchvision operator, so the lines say nothing to our user.
    Errors still show.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_onnx(model: FaceSegmentationNet, path: str | os.PathLike, *, opset: int = 18) -> Path:
    """Write ``model`` as an ONNX graph with dynamic batch, height and width.

    The file is written under a temporary name and renamed.

    Raises:
        FaceSegmentationError: onnx or onnxscript is not installed.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise FaceSegmentationError(_EXTRA) from None
    path = Path(path)
    # Export the dense NCHW graph; the caller's model gets its settings back.
    fast, training = model.fast_inference, model.training
    channels_last = [
        p for p in model.parameters() if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    ]
    dense = model.to(memory_format=torch.contiguous_format).eval()
    dense.fast_inference = False
    example = torch.zeros(1, 3, 64, 80, device=dense.conv1_1.weight.device)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", max=8192), 3: torch.export.Dim("width", max=8192)}
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet_exporter_logs():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                dense,
                (example,),
                tmp,
                input_names=["data"],
                output_names=["score"],
                dynamic_shapes=(dims,),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        dense.fast_inference = fast
        dense.train(training)
        for p in channels_last:  # each parameter's own layout, fc6's included
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return path


def check_onnx(model: FaceSegmentationNet, path: str | os.PathLike, sizes=((1, 1), (61, 47), (257, 513))) -> float:
    """Largest relative error (max abs difference / max abs value) between ONNX
    Runtime on ``path`` and ``model`` over random inputs of ``sizes`` (batch 2)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FaceSegmentationError(_EXTRA) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    rng = np.random.default_rng(0)
    model = model.eval()
    for h, w in sizes:
        x = rng.uniform(-123, 151, size=(2, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x).to(model.conv1_1.weight.device)).cpu().numpy()
        out = session.run(["score"], {"data": x})[0]
        worst = max(worst, float(np.abs(out - ref).max() / np.abs(ref).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face_segmentation_pytorch.export",
        description="Export the face segmentation network to ONNX (dynamic N, H, W).",
    )
    parser.add_argument("output", help="output .onnx file")
    parser.add_argument("--params-dir", help="folder with the weights (default: the cache folder)")
    parser.add_argument("--weights", default="fcn8s_500", help="published weights name (default fcn8s_500)")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--check", action="store_true", help="compare ONNX Runtime with PyTorch and print the error")
    args = parser.parse_args(argv)
    from .pipeline.weights import find_or_download_state_dict

    try:
        state, source = find_or_download_state_dict(args.params_dir, weights=args.weights)
        model = FaceSegmentationNet.from_state_dict(state).eval()
        out = export_onnx(model, args.output, opset=args.opset)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) from {source}")
        if args.check:
            err = check_onnx(model, out)
            print(f"ONNX Runtime vs PyTorch: relative error {err:.2e}")
            if err >= 1e-4:
                print("error: the exported graph disagrees with PyTorch beyond 1e-4", file=sys.stderr)
                return 1
    except FaceSegmentationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
