"""Input preparation and output resizing, following the authors' tool.

The original pipeline: BGR uint8 image -> bicubic resize to the network's input
size (OpenCV ``INTER_CUBIC``, which does not antialias and yields uint8) ->
float -> subtract the BGR mean. No division and no contrast stretch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.fcn8s import BGR_MEAN
from .imageio import to_rgb

__all__ = ["image_to_input", "resize_bicubic_uint8", "resize_pmap", "Size"]

Size = int | tuple[int, int]


def _as_hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_bicubic_uint8(chw: torch.Tensor, size: Size) -> torch.Tensor:
    """Resize ``(..., C, H, W)`` values in 0..255 like ``cv2.resize(INTER_CUBIC)``.

    Both use the Keys kernel with a = -0.75, half-pixel centres, replicated
    borders and no antialiasing. The result is rounded and clamped to 0..255,
    as OpenCV returns uint8; OpenCV's fixed-point arithmetic makes it differ by
    at most one grey level on some pixels.
    """
    h, w = _as_hw(size)
    if tuple(chw.shape[-2:]) == (h, w):
        return chw.float()
    x = chw.float()
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    out = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    out = out.round_().clamp_(0.0, 255.0)
    return out.squeeze(0) if squeeze else out


def image_to_input(
    img,
    *,
    size: Size | None = None,
    mean_bgr: Sequence[float] = BGR_MEAN,
    pre_normalize: bool = False,
) -> torch.Tensor:
    """Turn an RGB image into a mean-subtracted BGR float tensor.

    Args:
        img: PIL image (converted to RGB if needed) or ``(H, W, 3)`` uint8 RGB array.
        size: ``None`` keeps the native size; an int or ``(height, width)``
            resizes bicubically as the authors' tool does.
        mean_bgr: Mean to subtract, BGR order.
        pre_normalize: Stretch the (resized) image linearly so its minimum is
            0 and its maximum 255 before subtracting the mean. The original
            tool does not do this; a flat image is left unchanged.

    Returns:
        ``(3, H, W)`` float32 tensor.
    """
    if isinstance(img, np.ndarray):
        arr = img
    else:
        arr = np.asarray(to_rgb(img))  # the same conversion as load_image's
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got shape {arr.shape} dtype {arr.dtype}"
        )
    # RGB -> BGR by reversing the channel axis, then HWC -> CHW.
    x = torch.from_numpy(np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))).float()
    if size is not None:
        x = resize_bicubic_uint8(x, size)
    if pre_normalize:
        lo, hi = x.min(), x.max()
        if hi > lo:
            x = (x - lo) * (255.0 / (hi - lo))
    mean = torch.tensor([float(m) for m in mean_bgr], dtype=torch.float32).view(3, 1, 1)
    return x - mean


def resize_pmap(pmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring an ``(H, W)`` or ``(N, H, W)`` probability map to ``size`` bilinearly."""
    h, w = size
    if tuple(pmap.shape[-2:]) == (h, w):
        return pmap
    x = pmap.unsqueeze(-3) if pmap.dim() == 3 else pmap[None, None]
    out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    out = out.clamp_(0.0, 1.0)
    return out.squeeze(-3) if pmap.dim() == 3 else out[0, 0]
