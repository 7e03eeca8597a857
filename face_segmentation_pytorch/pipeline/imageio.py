"""Reading images as users have them, finding them in folders, writing outputs safely."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import save_atomic
from ..errors import ImageReadError

__all__ = [
    "load_image",
    "to_rgb",
    "image_extensions",
    "find_images",
    "save_png_atomic",
    "save_npy_atomic",
    "OUTPUT_SUFFIXES",
]

#: File name endings of this tool's own outputs; never read back as inputs.
OUTPUT_SUFFIXES = (
    "__heatmap.png",
    "__heatmap16.png",
    "__heatmap.npy",
    "__mask.png",
    "__overlay.png",
    "__cutout.png",
    "__faces.json",
)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map integer or float grey values to 0..255 by the range their type implies."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    top = int(a.max()) if a.size else 0
    if top <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    if top <= 65535:  # 16-bit data, possibly stored in a 32-bit mode
        return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
    return np.clip(a * 255 // top, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Alpha is dropped, not composited, as the authors' tool drops it (BGRA ->
    BGR); 16- and 32-bit grey keeps its top 8 bits of range; CMYK, palette,
    YCbCr and 1-bit images go through Pillow's own conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode in ("RGBA", "RGBa", "RGBX", "LA", "La", "PA"):
        return img.convert("RGBA" if mode != "RGBX" else "RGB").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as 8-bit RGB with its EXIF orientation applied.

    Pillow's decompression-bomb guard stays on: an image above
    ``PIL.Image.MAX_IMAGE_PIXELS`` is refused with a message saying how to
    raise the limit.

    Raises:
        ImageReadError: One line naming the file and the reason.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"{path}: refused by Pillow's decompression-bomb guard ({e}); if you trust the file, "
            "raise the limit with MAX_IMAGE_PIXELS=<pixels> (or PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file Pillow can read") from None
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from None


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions Pillow can open on this installation."""
    exts = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset(e.lower() for e in exts)


def find_images(folder: str | os.PathLike, *, recursive: bool = False) -> tuple[list[Path], int]:
    """List the image files in ``folder``, sorted, skipping this tool's outputs.

    Files are chosen by extension (any format Pillow opens); a file with an
    image extension that turns out not to decode is reported when it is read.

    Returns:
        ``(images, number of other files skipped)``.
    """
    folder = Path(folder)
    exts = image_extensions()
    walker = folder.rglob("*") if recursive else folder.iterdir()
    images, skipped = [], 0
    for p in walker:
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.endswith(OUTPUT_SUFFIXES) or p.suffix.lower() not in exts:
            skipped += 1
            continue
        images.append(p)
    return sorted(images), skipped


def save_png_atomic(image: np.ndarray | Image.Image, path: str | os.PathLike) -> None:
    """Write an array (2-d uint8/uint16, or RGB/RGBA uint8) or PIL image as PNG, atomically."""
    pic = image if isinstance(image, Image.Image) else Image.fromarray(image)
    save_atomic(path, lambda f: pic.save(f, format="PNG"))


def save_npy_atomic(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write an array as ``.npy``, atomically."""
    save_atomic(path, lambda f: np.save(f, array))
