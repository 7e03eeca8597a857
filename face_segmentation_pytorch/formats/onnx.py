"""ONNX graphs of the networks: :func:`export_onnx` writes one, :func:`check_onnx`
compares ONNX Runtime with PyTorch on it.

A library module below the commands: the ``export`` command and
``FaceSegmenter(backend="onnxruntime")`` both use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FaceSegmentationError
from ..files.atomic import atomic_path
from ..weights.families import family_of_model

__all__ = ["export_onnx", "check_onnx", "ONNX_EXTRA"]

ONNX_EXTRA = (
    "ONNX export needs the onnx extra: pip install 'face_segmentation_pytorch[onnx]' (onnx, onnxscript, onnxruntime)"
)


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


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = 18) -> Path:
    """Write ``model`` (FCN-8s or LinkNet34) as an ONNX graph with dynamic batch,
    height and width.

    The graph's input is ``data``; its output is ``score`` (FCN-8s: Caffe's
    blob) or ``logits`` (LinkNet34), as the family names it. LinkNet34's height
    and width stay multiples of 32. The file is written under a temporary name
    and renamed.

    Raises:
        FaceSegmentationError: onnx or onnxscript is not installed.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise FaceSegmentationError(ONNX_EXTRA) from None
    family = family_of_model(model)
    path = Path(path)
    # Export the dense NCHW graph; the caller's model gets its settings back.
    fast, training = getattr(model, "fast_inference", None), model.training
    channels_last = [
        p for p in model.parameters() if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    ]
    dense = model.to(memory_format=torch.contiguous_format).eval()
    if fast is not None:
        dense.fast_inference = False
    m = family.size_multiple
    device = next(dense.parameters()).device
    example = torch.zeros(1, 3, 2 * m if m > 1 else 64, 3 * m if m > 1 else 80, device=device)
    if m > 1:  # sides stay multiples of m: export the multiple as the free dimension
        hw = (m * torch.export.Dim("height_blocks", max=8192 // m), m * torch.export.Dim("width_blocks", max=8192 // m))
    else:
        hw = (torch.export.Dim("height", max=8192), torch.export.Dim("width", max=8192))
    dims = {0: torch.export.Dim("batch"), 2: hw[0], 3: hw[1]}
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet_exporter_logs():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                dense,
                (example,),
                tmp,
                input_names=["data"],
                output_names=[family.onnx_output],
                dynamic_shapes=(dims,),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        if fast is not None:
            dense.fast_inference = fast
        dense.train(training)
        for p in channels_last:  # each parameter's own layout, fc6's included
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, sizes=None) -> float:
    """Largest relative error (max abs difference / max abs value) between ONNX
    Runtime on ``path`` and ``model`` over random inputs (batch 2) of ``sizes``
    (default: a few odd sizes, multiples of 32 for LinkNet34)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FaceSegmentationError(ONNX_EXTRA) from None
    family = family_of_model(model)
    if sizes is None:
        sizes = ((1, 1), (61, 47), (257, 513)) if family.size_multiple == 1 else ((32, 32), (64, 96), (256, 256))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    rng = np.random.default_rng(0)
    model = model.eval()
    device = next(model.parameters()).device
    for h, w in sizes:
        x = rng.uniform(-123, 151, size=(2, 3, h, w)).astype(np.float32)
        if family.size_multiple > 1:
            x /= 58.0  # normalised RGB, as LinkNet34 is fed
        with torch.no_grad():
            ref = model(torch.from_numpy(x).to(device)).cpu().numpy()
        out = session.run([family.onnx_output], {"data": x})[0]
        worst = max(worst, float(np.abs(out - ref).max() / np.abs(ref).max()))
    return worst
