"""Runtimes other than PyTorch for the network: ONNX Runtime and OpenVINO.

Both run the same ONNX graph, exported once beside the weights file
(``<weights file>.onnx``, remade when the weights file is newer) by
:func:`~face_segmentation_pytorch.formats.onnx.export_onnx`, and both run on
the CPU. Each backend is a function ``(N, 3, H, W) float32 batch -> (N, H, W)
face probabilities``, the same contract as the torch forward, so everything
before and after the network is shared.

Precision is stated, never picked by the runtime: OpenVINO runs a CPU with
bfloat16 units in bfloat16 unless told otherwise, so this module always sets
``INFERENCE_PRECISION_HINT`` and reads back what the compiled model holds.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FaceSegmentationError

if TYPE_CHECKING:  # the runtimes and the exporter are imported where a backend is built
    import torch
    from torch import nn

    from ..weights.families import Family

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "CPU_ONLY_BACKENDS",
    "OPENVINO_EXTRA",
    "backend_device",
    "backend_precisions",
    "onnx_file",
    "require_runtime",
    "onnxruntime_forward",
    "openvino_forward",
]

#: Every value of ``backend`` / ``BACKEND``.
BACKENDS = ("torch", "onnxruntime", "openvino")

#: How each backend is named where a summary says what ran.
BACKEND_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}

#: Backends that run on the CPU only: with no DEVICE given they take the CPU.
CPU_ONLY_BACKENDS = ("onnxruntime", "openvino")

OPENVINO_EXTRA = "backend openvino needs the openvino extra: pip install 'face_segmentation_pytorch[openvino]'"

_OPENVINO_TYPES = {"fp32": "f32", "bf16": "bf16"}


_PRECISIONS = {"torch": ("fp32", "tf32", "fp16", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


def backend_precisions(backend: str) -> tuple[str, ...]:
    """The precisions ``backend`` runs (the torch backend: every one, each where the
    device has it; see :mod:`.precision`)."""
    return _PRECISIONS[backend]


def backend_device(backend: str, device: str | None) -> str | None:
    """The device ``backend`` runs on for a DEVICE value: the CPU-only backends take
    the CPU when none is named, instead of the CUDA device torch would default to."""
    return (device or "cpu") if backend in CPU_ONLY_BACKENDS else device


def require_runtime(backend: str) -> None:
    """Fail at once, naming the extra, when ``backend``'s runtime is not installed
    (before a one-off export that would take seconds for nothing)."""
    module, extra = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}[backend]
    try:
        __import__(module)
    except ImportError:
        raise FaceSegmentationError(
            f"backend {backend} needs the {extra} extra: pip install 'face_segmentation_pytorch[{extra}]'"
        ) from None


def onnx_file(net: nn.Module, weights_source: str | os.PathLike | None, *, progress: bool = True) -> Path:
    """The ONNX graph of ``net``: ``<weights_source>.onnx``, exported now when it is
    missing or older than the weights file; for a model object without a file, a
    private temporary file."""
    from ..formats.onnx import export_onnx

    if weights_source is not None:
        path = Path(str(weights_source) + ".onnx")
        stale = not path.exists() or path.stat().st_mtime < Path(weights_source).stat().st_mtime
    else:
        path, stale = Path(tempfile.mkdtemp(prefix="fsp_onnx_")) / "model.onnx", True
    if stale:
        if progress:
            print(
                f"face_segmentation_pytorch: exporting the network to ONNX once, to {path} "
                "(about 20 s for the full network; later runs reuse the file)",
                file=sys.stderr,
                flush=True,
            )
        start = time.perf_counter()
        export_onnx(net, path)
        if progress:
            print(f"face_segmentation_pytorch: exported in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return path


def onnxruntime_forward(
    onnx_path: Path, family: Family, face_channel: int | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime's CPU provider on ``onnx_path``: a batch -> probabilities function (float32)."""
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise FaceSegmentationError(
            "backend onnxruntime needs the onnx extra: pip install 'face_segmentation_pytorch[onnx]'"
        ) from None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def forward(batch: torch.Tensor) -> torch.Tensor:
        out = session.run([family.onnx_output], {"data": batch.contiguous().numpy()})[0]
        return family.logits_to_pmap(torch.from_numpy(out), face_channel)

    forward.runtime = f"ONNX Runtime {ort.__version__}, fp32"
    return forward


def openvino_forward(
    onnx_path: Path, family: Family, face_channel: int | None, precision: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """OpenVINO's CPU plugin on ``onnx_path`` in ``precision``: a batch -> probabilities function.

    ``fp32`` sets ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO would otherwise
    run a CPU with bfloat16 units in bfloat16), ``bf16`` sets ``bf16``; the
    caller has checked that the CPU computes bfloat16 natively. The compiled
    model's precision is read back and a mismatch refused. One compiled model
    with dynamic batch, height and width (measured as fast as a static shape
    on LinkNet34 at 256x256: 42.3 against 42.5 ms), on
    ``torch.get_num_threads()`` threads (one in worker processes), latency
    first; calls are serialised (an infer request is not thread-safe).

    Raises:
        FaceSegmentationError: openvino is not installed, or OpenVINO would not
            run the precision asked for.
    """
    import torch

    try:
        import openvino as ov
    except ImportError:
        raise FaceSegmentationError(OPENVINO_EXTRA) from None
    want = _OPENVINO_TYPES[precision]
    core = ov.Core()
    if want == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise FaceSegmentationError(
            "precision bf16 with backend openvino: OpenVINO reports no bfloat16 on this CPU; use PRECISION=fp32"
        )
    config = {
        "INFERENCE_PRECISION_HINT": want,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    if got != getattr(ov.Type, want):
        raise FaceSegmentationError(
            f"backend openvino compiled the network in {got.get_type_name()}, not {want} as asked; "
            "use BACKEND=torch for this precision"
        )
    request = compiled.create_infer_request()
    output = compiled.output(family.onnx_output)
    lock = threading.Lock()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with lock:
            # infer copies the outputs out of the request (share_outputs=False).
            out = request.infer({0: batch.contiguous().numpy()})[output]
        return family.logits_to_pmap(torch.from_numpy(out), face_channel)

    # What ran, as the compiled model reports it: the commands print this.
    forward.runtime = f"OpenVINO {ov.__version__.split('-')[0]}, inference precision {got.get_type_name()}"
    return forward
