"""The authors' mask post-processing: largest component, hole filling, smoothing.

These follow the helpers of the authors' C++ library and use OpenCV, as they
did, so results match theirs: 8-connected components, flood fill from the image
corner, and a morphological open then close with an elliptic 5x5 kernel.
OpenCV is optional for the rest of the package; these functions say how to get
it when it is missing.
"""

from __future__ import annotations

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
            raise ConfigError(
                f"unknown post-processing step {n!r}; use a comma-separated list of: "
                f"{', '.join(STEPS)}"
            )
    return tuple(names)


def apply_steps(mask: np.ndarray, steps: Sequence[str]) -> np.ndarray:
    """Apply named steps in order; returns a boolean mask."""
    out = np.asarray(mask) > 0
    for name in steps:
        out = STEPS[name](out)
    return out
