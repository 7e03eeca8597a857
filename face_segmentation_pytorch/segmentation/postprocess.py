"""The authors' mask post-processing: largest component, hole filling, smoothing;
and edge work for blending: growing or shrinking a mask, feathering its edge.

These follow the helpers of the authors' C++ library and use OpenCV, as they
did, so results match theirs: 8-connected components, flood fill from the image
corner, and a morphological open then close with an elliptic 5x5 kernel.
OpenCV is optional for the rest of the package; these functions say how to get
it when it is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = [
    "largest_component",
    "fill_holes",
    "smooth",
    "full_postprocess",
    "STEPS",
    "parse_steps",
    "apply_steps",
    "dilate",
    "feather",
    "check_px",
]


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ConfigError(
            "mask post-processing needs OpenCV: pip install 'opencv-python-headless<5' "
            "(it is in requirements-cpu.txt and requirements-gpu.txt)"
        ) from None
    return cv2


def _as_u8(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-d mask, got shape {mask.shape}")
    return (mask > 0).astype(np.uint8)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component.

    Args:
        mask: 2-d array, foreground where non-zero.

    Returns:
        Boolean mask; all False if the input is empty. Ties keep the component
        found first in row-major order.
    """
    cv2 = _cv2()
    m = _as_u8(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(m.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that the flood fill from the border cannot reach.

    The authors flood-fill from the image corner; the mask is padded by one
    background pixel first so that a foreground corner pixel does not stop
    the fill (background touching any border is never a hole).

    Returns:
        Boolean mask.
    """
    cv2 = _cv2()
    m = _as_u8(mask)
    flood = np.pad(m, 1)
    ffmask = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    # 4-connected fill (OpenCV's default) of the outside background with 2.
    cv2.floodFill(flood, ffmask, (0, 0), 2)
    outside = flood[1:-1, 1:-1] == 2
    return ~outside


def smooth(mask: np.ndarray, radius: int = 2, iterations: int = 1) -> np.ndarray:
    """Morphological open then close with an elliptic kernel of side ``2*radius+1``.

    Returns:
        Boolean mask.
    """
    cv2 = _cv2()
    m = _as_u8(mask)
    if radius < 1:
        return m > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel, iterations=iterations)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel, iterations=iterations)
    return m > 0


def full_postprocess(mask: np.ndarray) -> np.ndarray:
    """The authors' combined sequence: largest component, fill holes, smooth,
    then largest component and fill holes again."""
    m = fill_holes(largest_component(mask))
    m = smooth(m)
    return fill_holes(largest_component(m))


#: Post-processing steps by name, for the CLI and :class:`FaceSegmenter`.
STEPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "largest": largest_component,
    "fill_holes": fill_holes,
    "smooth": smooth,
    "full": full_postprocess,
}


def parse_steps(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn ``"largest,fill_holes"`` (or a list of names) into validated step names.

    Raises:
        ConfigError: An unknown step, with the list of known ones.
    """
    if spec is None:
        return ()
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        if n not in STEPS:
            raise ConfigError(f"unknown post-processing step {n!r}; use a comma-separated list of: {', '.join(STEPS)}")
    return tuple(names)


def apply_steps(mask: np.ndarray, steps: Sequence[str]) -> np.ndarray:
    """Apply named steps in order; returns a boolean mask."""
    out = np.asarray(mask) > 0
    for name in steps:
        out = STEPS[name](out)
    return out


# ---------------------------------------------------------------------------
# Edges for blending: dilate / erode by a distance, feather by a distance.
#
# Both work in Euclidean distance between pixel centres. Pixels outside the
# image are ignored: they add nothing to a dilation and erode nothing, so a face
# cut by the frame keeps its mask (and a feathered alpha of 1) up to the frame
# instead of getting a fake edge there. OpenCV's morphology and distance
# transform both treat the outside that way by default.


def check_px(px, name: str = "px", *, allow_negative: bool = True) -> int:
    """Validate a distance in whole pixels; returns it as a Python ``int``.

    Raises:
        TypeError: ``px`` is not an integer (floats, even ``3.0``, and bools are refused).
        ValueError: ``px`` is negative where that has no meaning.
    """
    if isinstance(px, (bool, np.bool_)) or not isinstance(px, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number of pixels (an int), got {px!r}")
    px = int(px)
    if px < 0 and not allow_negative:
        raise ValueError(f"{name} must be >= 0 pixels, got {px}")
    return px


def _window(m: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """The mask's bounding box grown by ``pad`` pixels (clipped to the image),
    or ``None`` for an empty mask. Work outside it cannot change the result."""
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    h, w = m.shape
    return (
        slice(max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, h)),
        slice(max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, w)),
    )


def _disc(r: int) -> np.ndarray:
    """Exactly round structuring element: every offset within Euclidean distance r.

    (``cv2.getStructuringElement(MORPH_ELLIPSE, ...)`` is not this set: at
    r = 2 it has 17 pixels instead of 13, at r = 8 213 instead of 197.)
    """
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


#: Up to this radius :func:`_grow` uses ``cv2.dilate`` with an exact disc; above
#: it, a Euclidean distance transform thresholded at r. Both give the same
#: pixels (the tests check it); they differ in cost. Measured in dilate() on a
#: 1000x1000 image, one OpenCV thread, for a 600x440 face ellipse / a mask
#: covering 70% of the image: the disc costs about r^2 per pixel (r=3: 1.0/1.7 ms,
#: r=8: 1.8/3.7 ms, r=16: 4.6/14 ms, r=32: 25/52 ms, r=64: 117/197 ms,
#: r=200: 2 s) while the distance transform costs the same for any r
#: (4-15/11-17 ms). The crossover is near r = 16. (OpenCV's own
#: MORPH_ELLIPSE kernel is as slow as the disc and not round.)
_KERNEL_MAX_RADIUS = 12


def _grow(cv2, m: np.ndarray, r: int) -> np.ndarray:
    """Pixels within Euclidean distance ``r`` (>= 1) of a non-zero pixel of ``m``."""
    if r <= _KERNEL_MAX_RADIUS:
        return cv2.dilate(m, _disc(r)) > 0
    # Distance from each pixel to the nearest non-zero one (exact: DIST_MASK_PRECISE).
    d = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # Squared distances are whole numbers: cut halfway between r^2 and r^2 + 1
    # so float rounding in d cannot move a pixel across the threshold.
    return d <= math.sqrt(r * r + 0.5)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow (``px > 0``) or shrink (``px < 0``) a mask by ``|px|`` pixels in every direction.

    A pixel is in the grown mask when its centre lies within Euclidean distance
    ``px`` of a mask pixel's centre (morphological dilation by an exactly round
    disc), so a disc of radius r grown by 3 is a disc of radius r + 3; shrinking
    is the same operation on the background (a pixel stays when no background
    pixel lies within ``|px|``), so a disc shrunk by more than its radius is
    empty. ``px = 0`` returns the mask unchanged. Any size is allowed: growing a
    single pixel by more than the image's diagonal fills the image.

    Pixels outside the image count for nothing: they do not erode a mask that
    touches the border (a face cut by the frame keeps its edge at the frame).

    Args:
        mask: 2-d array, foreground where non-zero.
        px: Pixels to move the edge outwards; negative moves it inwards.

    Returns:
        Boolean mask of the same shape.

    Raises:
        ValueError: ``mask`` is not 2-d.
        TypeError: ``px`` is not an integer.
        ConfigError: OpenCV is not installed.
    """
    cv2 = _cv2()
    m = _as_u8(mask)
    r = check_px(px)
    if r == 0 or m.size == 0:
        return m > 0
    out = np.zeros(m.shape, bool)
    # Growing reaches at most |px| beyond the mask's box; shrinking needs one
    # ring of background around the box (it stands in for all background
    # beyond it: it is no farther from any pixel inside).
    win = _window(m, r if r > 0 else 1)
    if win is None:
        return out
    mw = np.ascontiguousarray(m[win])
    if r > 0:
        out[win] = _grow(cv2, mw, r)
    else:
        out[win] = ~_grow(cv2, 1 - mw, -r)
    return out


def feather(mask: np.ndarray, px: int) -> np.ndarray:
    """Soft-edged alpha matte of a mask: 0.5 on the edge, ramping to 1 and 0 within ``px`` pixels.

    The alpha is a clipped signed distance to the mask's edge:
    ``alpha = clip(0.5 + s / (2 * px), 0, 1)``, where ``s`` is the distance from
    a pixel's centre to the edge, positive inside and negative outside. The
    edge runs between mask and background pixels, half a pixel from either
    centre, so ``s`` is the Euclidean distance between centres to the nearest
    pixel on the other side, minus 0.5: the pixels on both sides of a straight
    edge get ``0.5 +- 1 / (4 * px)``, averaging exactly 0.5. Hence:

    * 1.0 everywhere at least ``px`` inside the edge, 0.0 everywhere at least
      ``px`` outside it (also for the edge as the outline of the pixel squares:
      ``s`` never understates that distance), strictly between on the band;
    * monotone across the edge, since alpha is a non-decreasing function of ``s``.

    A Gaussian blur of the mask is not used because it cannot keep these
    bounds: its reach is about 3 sigma rather than a stated ``px``, it leaks
    alpha beyond that and eats into the face's interior, it moves the 0.5 level
    inwards at corners, and on a thin part of the mask (narrower than a few
    sigma) it never reaches 1. The signed distance is exact for any shape and
    costs two distance transforms, whatever ``px``.

    Pixels outside the image count for nothing, as in :func:`dilate`: a mask
    touching the border stays at 1 up to the border.

    Args:
        mask: 2-d array, foreground where non-zero.
        px: Half-width of the ramp in pixels, >= 0; 0 returns the mask as 0.0/1.0.

    Returns:
        ``float32`` array of the mask's shape with values in [0, 1].

    Raises:
        ValueError: ``mask`` is not 2-d, or ``px`` is negative.
        TypeError: ``px`` is not an integer.
        ConfigError: OpenCV is not installed.
    """
    cv2 = _cv2()
    m = _as_u8(mask)
    r = check_px(px, allow_negative=False)
    if r == 0 or m.size == 0:
        return m.astype(np.float32)
    out = np.zeros(m.shape, np.float32)
    # Alpha is 0 from px + 0.5 outside the edge on; inside, the ring of
    # background around the mask's box is as near as any background beyond it.
    win = _window(m, r + 1)
    if win is None:
        return out
    mw = np.ascontiguousarray(m[win])
    # d_in: inside pixels' distance to the nearest background pixel (0 outside);
    # d_out: outside pixels' distance to the nearest mask pixel (0 inside). With
    # no background in the window d_in is huge (OpenCV's "no zero pixel"), which
    # clips to 1 as it should.
    d_in = cv2.distanceTransform(mw, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d_out = cv2.distanceTransform(1 - mw, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    s = d_in  # in place from here: s = d_in - d_out - mask + 0.5, i.e.
    s -= d_out  # d_in - 0.5 inside and 0.5 - d_out outside
    s -= mw
    s += 0.5
    s *= np.float32(1.0 / (2 * r))
    s += 0.5
    out[win] = np.clip(s, 0.0, 1.0, out=s)
    return out
