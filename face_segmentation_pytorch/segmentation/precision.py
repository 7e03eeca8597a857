"""Numeric precision as a choice, exact by default.

- ``fp32`` (the default): float32 everywhere, and on CUDA with TF32 switched off
  for the library's own forward (cuDNN and cuBLAS would otherwise round float32
  convolutions and products to TF32's 10-bit mantissa: 1e-3 off Caffe on an H100
  instead of 4e-6). The switch is scoped: the caller's global torch flags are
  restored after every forward.
- ``tf32``: float32 weights, TF32 allowed on CUDA (CUDA only: a CPU has no TF32).
- ``fp16``, ``bf16``: weights and activations in that type (channels-last).
  ``fp16`` needs CUDA (CPU kernels for it are slow emulation); ``bf16`` runs on CUDA
  and on CPUs with native bfloat16 (AVX-512 BF16 or AMX), otherwise it is refused.
  Native means the instructions: oneDNN also runs bfloat16 on any AVX-512 CPU
  (and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` says yes there), by
  converting to float32 and back around float32 arithmetic, which is slower
  than float32 and less exact, so such CPUs are refused too.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "check_precision", "precision_dtype", "precision_scope"]

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 products in hardware: AVX-512 BF16 or AMX.

    torch's own queries first (``torch.cpu``, from cpuinfo), the kernel's flags
    where a torch lacks them.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without the queries
        flags = _cpu_flags()
        return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse what ``device`` cannot do, with the reason and the fix.

    Raises:
        ValueError: Unknown name, ``tf32``/``fp16`` on a CPU, ``bf16`` on a CPU
            without native bfloat16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        return
    if precision == "tf32":
        raise ValueError("precision tf32 exists only on CUDA GPUs; on the CPU use fp32 (exact) or bf16")
    if precision == "fp16":
        raise ValueError(
            "precision fp16 is refused on the CPU: PyTorch's CPU float16 convolutions are slow "
            "emulation, not a speed-up; use fp32 (exact) or bf16 on a CPU with native bfloat16"
        )
    if precision == "bf16" and not _cpu_has_native_bf16():
        raise ValueError(
            "precision bf16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX), which this one "
            "lacks (bfloat16 would be emulated, slower than fp32); use fp32"
        )


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype weights and activations take for ``precision``."""
    return _DTYPES[precision]


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device):
    """Set CUDA's TF32 switches for one forward pass, then restore the caller's.

    ``fp32`` turns TF32 off in cuDNN and cuBLAS, ``tf32`` turns it on; the
    half types and the CPU need no switch.
    """
    if device.type != "cuda" or precision not in ("fp32", "tf32"):
        yield
        return
    allow = precision == "tf32"
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = allow
        # cudnn.flags sets every switch it takes: keep the caller's enabled and
        # deterministic; benchmark=True picks the fastest kernels per shape
        # (measured on an H100 for the dense path, README "GPU").
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=True,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=allow,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
