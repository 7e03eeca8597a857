"""Mask files as boolean masks: one rule for ground truth, predictions and training.

The rule (docs/training.md, "How a mask file is read"):

- a palette image (mode ``P``): face where the palette index is non-zero
  (label maps: index 0 is the background);
- a file whose only values are 0 and 1 (a 0/1 label image): face where 1;
- any other image: its brightest colour channel (alpha ignored), scaled by the
  range its mode declares (8-bit by 255, 16-bit by 65535, float as 0..1), and
  face where that is at least 0.5, so 128 and up in an 8-bit file.

So an anti-aliased edge, JPEG noise around 0 and 255, and a red-on-black label
mask are read the same way wherever the file is used. :attr:`MaskFile.plain`
tells whether the file was a plain two-valued mask (black and white, or 0/1,
or palette indices of at most two values); evaluation reports how many were not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MaskFile", "mask_from_image", "read_mask"]

# Modes whose samples are 8-bit colour or grey values (alpha, where present, is last).
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


@dataclass(frozen=True)
class MaskFile:
    """A mask read by the rule.

    Attributes:
        mask: Boolean ``(H, W)`` array, True where face.
        plain: Whether the file held a plain two-valued mask (only black and
            full white, only 0 and 1, or at most two palette indices).
    """

    mask: np.ndarray
    plain: bool


def _declared_top(im) -> float:
    """The full-scale value of a non-palette, non-float mode."""
    from .imageio import bits_per_sample

    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode == "I":
        bits = bits_per_sample(im)
        return float(2**bits - 1) if bits in (15, 16) else float(2**31 - 1)
    return 255.0


def mask_from_image(im) -> MaskFile:
    """Apply the rule to a decoded PIL image (orientation already applied).

    Args:
        im: A ``PIL.Image.Image`` of any mode.

    Returns:
        The :class:`MaskFile`.
    """
    if im.mode in ("P", "PA"):
        index = np.asarray(im.getchannel(0) if im.mode == "PA" else im)
        return MaskFile(index != 0, np.unique(index).size <= 2)
    if im.mode == "1":
        return MaskFile(np.asarray(im, dtype=bool), True)
    if im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        top = 1.0
        colour_equal = True
    else:
        if im.mode not in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "I;16", "I;16L", "I;16B", "I;16N"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        arr = np.asarray(im)
        top = _declared_top(im)
        if arr.ndim == 3:
            colour = arr[..., : arr.shape[2] - 1] if im.mode in _ALPHA_MODES else arr
            values = colour.max(axis=2).astype(np.float64)
            colour_equal = bool(np.all(colour == colour[..., :1]))
        else:
            values = arr.astype(np.float64)
            colour_equal = True
    seen = np.unique(values)
    if seen.size and np.all(np.isin(seen, (0.0, 1.0))) and top != 1.0:
        # A 0/1 label image: 1 is face (it would be far below half the range).
        return MaskFile(values == 1.0, colour_equal)
    plain = colour_equal and bool(np.all(np.isin(seen, (0.0, top))))
    return MaskFile(values / top >= 0.5, plain)


def read_mask(path: str | os.PathLike) -> MaskFile:
    """Read a mask file by the rule (EXIF orientation applied, as images are).

    Raises:
        ImageReadError: The file cannot be read or decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..errors import ImageReadError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return mask_from_image(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file Pillow can read") from None
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from None
