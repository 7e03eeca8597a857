"""Drawing the face on a frame: the video command's three styles.

:func:`render_frame` draws a ``(H, W)`` face weight (a boolean mask, a
feathered alpha or a probability map) on a BGR frame; :func:`shown_map` picks
which of them a picture shows. A boolean mask takes a lookup-table path (two
values per input value and channel), since the writer thread that draws shares
the cores with the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["render_frame", "shown_map", "STYLES", "FADE_KEEP"]

#: Rendering styles of :func:`render_frame`.
STYLES = ("overlay", "fade", "cutout")
#: ``fade``: how much of a background pixel stays, the rest turning white. The
#: OneFlow demo lowers the background's alpha by 180 of 255 and pastes the frame
#: on white, so 75/255 of the frame remains there.
FADE_KEEP = 75.0 / 255.0


def _cv2():
    import cv2

    return cv2


def shown_map(pmap: np.ndarray, mask: np.ndarray | None, alpha: np.ndarray | None) -> np.ndarray:
    """What a picture shows as the face: the feathered alpha, else the mask,
    else the probability map (the CLI's OVERLAY and CUTOUT rule)."""
    if alpha is not None:
        return alpha
    if mask is not None:
        return mask
    return pmap


def _weight(shown: np.ndarray) -> np.ndarray:
    m = np.asarray(shown)
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    m = m.astype(np.float32, copy=False)
    return np.clip(m, 0.0, 1.0)


def render_frame(
    bgr: np.ndarray,
    shown: np.ndarray,
    style: str = "overlay",
    *,
    color: Sequence[int] = (255, 0, 0),
    background: Sequence[int] = (0, 255, 0),
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw the face on a BGR frame; returns a new ``(H, W, 3)`` uint8 BGR frame.

    With ``m`` the face weight per pixel (``shown``: a boolean mask, or a map
    in ``[0, 1]`` such as a probability or a feathered alpha), in float32 and
    rounded half to even at the end:

    - ``overlay``: ``frame * (1 - a) + color * a`` with ``a = alpha * m``, the
      authors' red blend (:func:`~.render.overlay`, same formula);
    - ``fade``: ``frame * k + 255 * (1 - k)`` with ``k = m + (1 - m) *``
      :data:`FADE_KEEP`: the background fades towards white as in the OneFlow
      demo, the face stays;
    - ``cutout``: ``frame * m + background * (1 - m)``: the face on a colour.

    Args:
        bgr: The frame, OpenCV's BGR order.
        shown: ``(H, W)`` face weight (see :func:`shown_map`).
        style: One of :data:`STYLES`.
        color: ``overlay`` colour, RGB.
        background: ``cutout`` background, RGB.
        alpha: ``overlay`` opacity where the face weight is 1.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    img = np.asarray(bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR frame, got {img.shape} {img.dtype}")
    if np.asarray(shown).shape != img.shape[:2]:
        raise ValueError(f"face map {np.asarray(shown).shape} and frame {img.shape[:2]} differ in size")
    if np.asarray(shown).dtype == np.bool_:
        return _render_mask(img, np.asarray(shown), style, color, background, alpha)
    m = _weight(shown)
    f = img.astype(np.float32)
    if style == "overlay":
        a = (np.float32(alpha) * m)[..., None]
        out = f * (np.float32(1.0) - a) + np.asarray(color[::-1], np.float32) * a
    elif style == "fade":
        keep = (m + (np.float32(1.0) - m) * np.float32(FADE_KEEP))[..., None]
        out = f * keep + np.float32(255.0) * (np.float32(1.0) - keep)
    else:
        w = m[..., None]
        out = f * w + np.asarray(background[::-1], np.float32) * (np.float32(1.0) - w)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _render_mask(img, mask, style, color, background, alpha) -> np.ndarray:
    """:func:`render_frame` for a boolean mask, through per-channel lookup tables.

    With the weight 0 or 1 every output pixel is one of two values per input
    value and channel, so the float32 formula is evaluated once on 0..255 (the
    same operations, so the same rounding) and applied with ``cv2.LUT``: a few
    times faster on a 640x480 frame than the full float pass, which matters
    because the writer thread shares the cores with the network.
    """
    cv2 = _cv2()
    v = np.arange(256, dtype=np.float32)[:, None]  # (256, 1) against (3,) BGR constants
    m8 = mask.view(np.uint8)  # copyTo's mask: non-zero where the face is
    if style == "overlay":
        a = np.float32(alpha) * np.float32(1.0)
        table = v * (np.float32(1.0) - a) + np.asarray(color[::-1], np.float32) * a
        out = img.copy()
        cv2.copyTo(cv2.LUT(img, _lut(table)), m8, out)  # background pixels keep their value
        return out
    if style == "fade":
        keep = np.float32(0.0) + (np.float32(1.0) - np.float32(0.0)) * np.float32(FADE_KEEP)
        out = cv2.LUT(img, _lut(np.broadcast_to(v * keep + np.float32(255.0) * (np.float32(1.0) - keep), (256, 3))))
    else:
        out = np.empty_like(img)
        out[:] = np.asarray(background[::-1], np.uint8)
    cv2.copyTo(img, m8, out)  # the face keeps its pixels
    return out


def _lut(table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.ascontiguousarray(table)), 0, 255).astype(np.uint8).reshape(256, 1, 3)
