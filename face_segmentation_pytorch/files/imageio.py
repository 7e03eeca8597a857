"""Reading images as users have them, finding them in folders, writing outputs safely."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError
from .atomic import save_atomic

__all__ = [
    "bits_per_sample",
    "header_size",
    "load_image",
    "to_rgb",
    "as_rgb_image",
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


def bits_per_sample(img: Image.Image) -> int | None:
    """The value bits the file declares for a mode ``I`` image, if any.

    Older Pillow releases open 16-bit grey PNGs as mode ``I``; PNG samples
    have at most 16 bits. TIFF states its depth in the BitsPerSample tag and
    signed samples in SampleFormat (2): a signed 16-bit TIFF has 15 value bits.
    """
    if img.format == "PNG":
        return 16
    tags = getattr(img, "tag_v2", None)
    if tags is not None and 258 in tags:
        bits = tags[258]
        bits = int(bits[0] if isinstance(bits, tuple) else bits)
        fmt = tags.get(339, 1)
        signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
        return bits - 1 if signed else bits
    return None


def _scale_to_uint8(arr: np.ndarray, mode: str, bits: int | None = None) -> np.ndarray:
    """Map grey values to 0..255 by the range the image's mode and bit depth declare.

    Never by the values themselves: one bright pixel must not darken the rest.

    - ``I;16*`` (and mode ``I`` with 16 bits declared): ``round(v * 255 / 65535)``;
    - ``I`` with a signed 16-bit TIFF's 15 value bits: ``round(v * 255 / 32767)``, negatives 0;
    - ``I`` (32-bit signed integers): ``round(v * 255 / (2**31 - 1))``, negatives 0;
    - ``F`` (32-bit float): the 0..1 convention of float images (scikit-image,
      OpenCV's display), ``round(v * 255)``, clipped; NaN becomes 0.
    """
    if mode == "F":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    if mode.startswith("I;16"):
        top = 65535
    elif mode == "I" and bits in (15, 16):
        top = 2**bits - 1
    else:
        top = 2**31 - 1
    a = np.clip(arr.astype(np.float64), 0, top)
    return np.rint(a * (255.0 / top)).astype(np.uint8)


def to_rgb(img: Image.Image, *, bits: int | None = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Alpha is dropped, not composited, as the authors' tool drops it (BGRA ->
    BGR); 16- and 32-bit integer and float grey are scaled by the range their
    mode declares (:func:`_scale_to_uint8`); CMYK, palette, YCbCr and 1-bit
    images go through Pillow's own conversion.

    Args:
        img: Any Pillow image.
        bits: Bit depth the file declared for a mode ``I`` image (16 for an
            older Pillow's 16-bit PNG); ``None``: 32-bit.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        if bits is None and mode == "I":
            bits = bits_per_sample(img)
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode, bits), mode="L").convert("RGB")
    if mode in ("RGBA", "RGBa", "RGBX", "LA", "La", "PA"):
        return img.convert("RGBA" if mode != "RGBX" else "RGB").convert("RGB")
    return img.convert("RGB")


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image or an array (grey ``(H, W)``, ``(H, W, 3)`` RGB, ``(H, W, 4)``
    RGBA; uint8, uint16 or float in 0..1) as 8-bit RGB, by :func:`to_rgb`'s rules."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16 and arr.ndim == 2:
        return to_rgb(Image.fromarray(arr))  # uint16 -> mode I;16
    if np.issubdtype(arr.dtype, np.floating) and arr.ndim == 2:
        return to_rgb(Image.fromarray(arr.astype(np.float32)))  # float32 -> mode F
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(
            f"expected an image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 "
            f"(or (H, W) uint16/float grey), got shape {arr.shape} dtype {arr.dtype}"
        )
    return to_rgb(Image.fromarray(arr))


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
            # The declared depth, read before exif_transpose (its copy has no format or tags).
            bits = bits_per_sample(im) if im.mode == "I" else None
            im = ImageOps.exif_transpose(im)
            return to_rgb(im, bits=bits)
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


def header_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`load_image` returns it (EXIF
    orientation applied), from the header alone.

    Raises:
        OSError, ValueError: The file cannot be opened as an image.
    """
    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: Pillow's exif_transpose ignores it too
            orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


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
