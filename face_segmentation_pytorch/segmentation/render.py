"""Pictures of results: mask overlays, alpha cut-outs, and galleries (Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["overlay", "cutout", "gallery", "heatmap_to_png_array"]


def _rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
    return arr


#: A map whose maximum is above this is taken as 8-bit (0..255). Booleans, 0/1
#: masks, probability maps and alpha mattes in [0, 1] (such as
#: :func:`~.postprocess.feather`'s float32 alpha) are at most 1; the small margin
#: keeps a float matte that overshoots 1 by rounding from being read as 8-bit.
_EIGHT_BIT_ABOVE = 1.001


def _map_array(m: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    if m.shape != shape:
        raise ValueError(f"{what} {m.shape} and image {shape} differ in size")
    return m


def overlay(image, mask: np.ndarray, color: Sequence[int] = (255, 0, 0), alpha: float = 0.5) -> Image.Image:
    """Blend ``color`` over the masked pixels, as the authors' debug render does.

    Args:
        image: PIL image or ``(H, W, 3)`` uint8 RGB array.
        mask: ``(H, W)`` mask, foreground where non-zero; or a float map in
            [0, 1] (a probability map, a feathered alpha), which then weights
            the blend per pixel; or an 8-bit 0..255 map.
        color: RGB colour of the face.
        alpha: Opacity of the colour where the mask is 1.
    """
    rgb = _rgb_array(image).astype(np.float32)
    m = _map_array(mask, rgb.shape[:2], "mask")
    if m.max(initial=0) > _EIGHT_BIT_ABOVE:
        m = m / 255.0
    m = np.clip(m, 0.0, 1.0)
    a = (alpha * m)[..., None]
    out = rgb * (1 - a) + np.asarray(color, np.float32) * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def cutout(image, pmap: np.ndarray) -> Image.Image:
    """RGBA image whose alpha is the face probability or a feathered alpha
    (soft mattes in [0, 1]), or a mask's 0/255; alpha = round(255 * value)."""
    rgb = _rgb_array(image)
    p = _map_array(pmap, rgb.shape[:2], "map")
    alpha = p if p.max(initial=0) > _EIGHT_BIT_ABOVE else p * 255.0
    rgba = np.dstack([rgb, np.clip(np.rint(alpha), 0, 255).astype(np.uint8)])
    return Image.fromarray(rgba, mode="RGBA")


def heatmap_to_png_array(pmap: np.ndarray, bits: int = 8) -> np.ndarray:
    """Probability map to a uint8 (``bits=8``) or uint16 (``bits=16``) array."""
    p = np.clip(np.asarray(pmap, dtype=np.float64), 0.0, 1.0)
    if bits == 8:
        return np.rint(p * 255).astype(np.uint8)
    if bits == 16:
        return np.rint(p * 65535).astype(np.uint16)
    raise ValueError(f"bits must be 8 or 16, got {bits}")


def gallery(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    *,
    tile: int = 256,
    headers: Sequence[str] = ("image", "overlay", "mask"),
) -> Image.Image:
    """Lay pictures out in a grid, one row per image, each tile ``tile`` pixels high.

    Args:
        rows: ``(caption, [picture, ...])`` per row; pictures are scaled to the
            tile height keeping their aspect ratio.
        tile: Row height in pixels.
        headers: Column titles drawn above the first row.
    """
    pad, caption_h = 6, 16
    scaled_rows = []
    for caption, pics in rows:
        scaled = []
        for pic in pics:
            pic = pic.convert("RGB")
            w = max(1, round(pic.width * tile / max(pic.height, 1)))
            scaled.append(pic.resize((w, tile), Image.BILINEAR))
        scaled_rows.append((caption, scaled))
    ncols = max((len(p) for _, p in scaled_rows), default=0)
    col_w = [max((p[c].width for _, p in scaled_rows if c < len(p)), default=tile) for c in range(ncols)]
    width = pad + sum(w + pad for w in col_w)
    height = caption_h + pad + len(scaled_rows) * (tile + caption_h + pad)
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for c, w in enumerate(col_w):
        if c < len(headers):
            draw.text((x, 2), headers[c], fill=(0, 0, 0))
        x += w + pad
    y = caption_h + pad
    for caption, pics in scaled_rows:
        draw.text((pad, y), caption, fill=(0, 0, 0))
        x = pad
        for c, pic in enumerate(pics):
            canvas.paste(pic, (x, y + caption_h))
            x += col_w[c] + pad
        y += tile + caption_h + pad
    return canvas
