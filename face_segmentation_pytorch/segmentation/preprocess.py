"""Input preparation and output resizing, following the authors' tool.

The original pipeline: BGR uint8 image -> bicubic resize to the network's input
size (OpenCV ``INTER_CUBIC``, which does not antialias and yields uint8) ->
float -> subtract the BGR mean. No division and no contrast stretch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..files.imageio import to_rgb
from ..models.constants import BGR_MEAN

__all__ = [
    "Preprocessing",
    "image_to_input",
    "prepare_input",
    "prepare_uint8",
    "normalize_inputs",
    "resize_bicubic_uint8",
    "resize_pmap",
    "RESAMPLERS",
    "Size",
]

Size = int | tuple[int, int]


@dataclass(frozen=True)
class Preprocessing:
    """How a family's weights expect images (data, not code).

    Attributes:
        input_size: Side the weights were trained at; images are resized to it
            by default.
        channel_order: ``"BGR"`` or ``"RGB"``: the order the network takes.
        mean: Subtracted per channel, in the network's channel order, in 0..255 units.
        std: Divides per channel after the mean, in 0..255 units (1 for Caffe).
        resample: ``"bicubic"`` (OpenCV's ``INTER_CUBIC``: Keys a=-0.75, no
            antialiasing, rounded to uint8; the authors' Caffe tool) or
            ``"pil_bilinear"`` (Pillow's bilinear resize of the uint8 image,
            as torchvision's ``transforms.Resize`` on a PIL image does).
        swap_input_channels: Reverse the image's channels before everything
            else: the OneFlow demo fed OpenCV's BGR frames to a network
            trained on RGB (a bug reproduced only on request).
    """

    input_size: int
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resample: str = "bicubic"
    swap_input_channels: bool = False


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


def _chw_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` as a ``(3, H, W)`` tensor on its own writable memory.

    ``ascontiguousarray`` returns a read-only input unchanged when the transpose
    is already contiguous (a 1x1 image, a 1-pixel row), and torch warns about
    every non-writable array it wraps; a copy then costs nothing worth keeping.
    """
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return torch.from_numpy(chw if chw.flags.writeable else chw.copy())


def _resize_pil_bilinear(arr: np.ndarray, size: Size) -> torch.Tensor:
    """Pillow's bilinear resize of a uint8 ``(H, W, 3)`` image, as torchvision's
    ``transforms.Resize`` does on a PIL image; returns ``(3, h, w)`` uint8."""
    from PIL import Image

    h, w = _as_hw(size)
    if arr.shape[:2] != (h, w):
        arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR))
    return _chw_tensor(arr)


def _resize_bicubic(arr: np.ndarray, size: Size) -> torch.Tensor:
    x = _chw_tensor(arr)
    # Rounded and clamped to 0..255 by resize_bicubic_uint8: the cast is exact.
    return resize_bicubic_uint8(x, size).to(torch.uint8)


#: The ways a weights entry may resize its inputs (:attr:`Preprocessing.resample`):
#: ``(H, W, 3)`` uint8 RGB in, ``(3, h, w)`` uint8 out.
RESAMPLERS = {"bicubic": _resize_bicubic, "pil_bilinear": _resize_pil_bilinear}


def prepare_uint8(img, preprocessing: Preprocessing, *, size: Size | None = None) -> torch.Tensor:
    """The resampling half of :func:`prepare_input`: the image at the network's
    size and in its channel order, still as ``(3, H, W)`` uint8.

    Every resampler yields whole grey levels (OpenCV and Pillow return uint8),
    so nothing is lost by stopping here: a pipeline sends these 4x smaller
    tensors from its workers to the device and runs :func:`normalize_inputs`
    there, with the same result.
    """
    if isinstance(img, np.ndarray):
        arr = img
    else:
        arr = np.asarray(to_rgb(img))  # the same conversion as load_image's
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {arr.shape} dtype {arr.dtype}")
    if preprocessing.swap_input_channels:
        arr = arr[:, :, ::-1]
    if size is not None:
        x = RESAMPLERS[preprocessing.resample](arr, size)
    else:
        x = _chw_tensor(arr)
    # Resizing works per channel, so reordering after it changes no value.
    if preprocessing.channel_order == "BGR":
        x = x.flip(0)
    return x


def normalize_inputs(x: torch.Tensor, preprocessing: Preprocessing, *, pre_normalize: bool = False) -> torch.Tensor:
    """The arithmetic half of :func:`prepare_input`, on any device, per image.

    Args:
        x: ``(3, H, W)`` or ``(N, 3, H, W)`` grey levels (uint8 or float) from
            :func:`prepare_uint8`.
        preprocessing: The entry's :class:`~.families.Preprocessing`.
        pre_normalize: Stretch each image linearly so its minimum is 0 and its
            maximum 255 first; a flat image is left unchanged.

    Returns:
        float32 ``(x - mean) / std`` of the same shape. Every step is one
        elementwise IEEE operation per value, so a batch gives each image
        exactly what it gets alone.
    """
    x = x.float()
    if pre_normalize:
        dims = (-3, -2, -1)
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        flat = hi <= lo
        scale = 255.0 / torch.where(flat, torch.ones_like(hi), hi - lo)
        x = torch.where(flat, x, (x - lo) * scale)
    mean = torch.tensor([float(m) for m in preprocessing.mean], dtype=torch.float32, device=x.device).view(3, 1, 1)
    x = x - mean
    if any(float(s) != 1.0 for s in preprocessing.std):
        x = x / torch.tensor([float(s) for s in preprocessing.std], dtype=torch.float32, device=x.device).view(3, 1, 1)
    return x


def prepare_input(
    img,
    preprocessing: Preprocessing,
    *,
    size: Size | None = None,
    pre_normalize: bool = False,
) -> torch.Tensor:
    """Turn an image into the network input its weights entry describes.

    Steps: RGB (any mode, by :func:`~.imageio.to_rgb`'s rules); the OneFlow
    demo's channel swap if the entry asks for it; resize to ``size`` with the
    entry's resampler; the network's channel order (:func:`prepare_uint8`);
    the optional contrast stretch; ``(x - mean) / std`` (:func:`normalize_inputs`).

    Args:
        img: PIL image or ``(H, W, 3)`` uint8 RGB array.
        preprocessing: The entry's :class:`~.families.Preprocessing`.
        size: ``None`` keeps the native size; an int or ``(height, width)`` resizes.
        pre_normalize: Stretch the (resized) image linearly so its minimum is
            0 and its maximum 255 first (not in the original tools); a flat
            image is left unchanged.

    Returns:
        ``(3, H, W)`` float32 tensor.
    """
    return normalize_inputs(prepare_uint8(img, preprocessing, size=size), preprocessing, pre_normalize=pre_normalize)


def image_to_input(
    img,
    *,
    size: Size | None = None,
    mean_bgr: Sequence[float] = BGR_MEAN,
    pre_normalize: bool = False,
) -> torch.Tensor:
    """Turn an RGB image into a mean-subtracted BGR float tensor (the FCN-8s input).

    The authors' tool: BGR, bicubic resize (OpenCV ``INTER_CUBIC``), subtract
    the BGR mean, no scaling; :func:`prepare_input` with the FCN-8s entries'
    preprocessing.

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
    pre = Preprocessing(input_size=0, channel_order="BGR", mean=tuple(mean_bgr), resample="bicubic")
    return prepare_input(img, pre, size=size, pre_normalize=pre_normalize)


def resize_pmap(pmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring an ``(H, W)`` or ``(N, H, W)`` probability map to ``size`` bilinearly."""
    h, w = size
    if tuple(pmap.shape[-2:]) == (h, w):
        return pmap
    x = pmap.unsqueeze(-3) if pmap.dim() == 3 else pmap[None, None]
    out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    out = out.clamp_(0.0, 1.0)
    return out.squeeze(-3) if pmap.dim() == 3 else out[0, 0]
