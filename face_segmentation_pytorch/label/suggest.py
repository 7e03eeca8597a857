"""Which frames to label next: evenly spaced ones to start, then those the model is least sure of.

The rule (docs/label.md says it for users):

1. Start frames: ``START_FRAMES`` evenly spaced frames, ``floor((k + 0.5) n / K)``
   for ``k = 0..K-1`` (the middle of each of ``K`` equal parts); unlabelled
   ones come first, in order.
2. Then the scanned frames by ``score = unsure + jump``, highest first, where

   - ``unsure = 1 - 2 mean(|p - 0.5|)`` over the frame's pixels (0 when every
     pixel's face probability ``p`` is 0 or 1, 1 when all are 0.5);
   - ``jump = 1 - min(IoU(m, m_prev), IoU(m, m_next))``, with ``m = p > threshold``
     and ``m_prev`` / ``m_next`` the masks of the neighbouring scanned frames
     (two empty masks have IoU 1): masks that jump between neighbours.

   Labelled frames are skipped, and so is any frame within
   :data:`NEIGHBOURHOOD` scanned positions of a labelled or an already listed
   frame: the neighbours of a hard frame are about as hard, and one of them is enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NEIGHBOURHOOD", "jump_scores", "mask_iou", "rank", "scan_indices", "start_frames", "unsure"]

#: Scanned positions around a labelled or listed frame that are not suggested.
NEIGHBOURHOOD = 1


def start_frames(n: int, k: int) -> list[int]:
    """``k`` evenly spaced frame indices of ``n`` (the middle of ``k`` equal parts; fewer when n < k)."""
    if n <= 0 or k <= 0:
        return []
    return sorted({min(n - 1, int((j + 0.5) * n / k)) for j in range(k)})


def scan_indices(n: int, most: int) -> list[int]:
    """The frames the scan scores: all when ``n <= most``, else ``most`` evenly spaced ones."""
    if n <= most:
        return list(range(n))
    return sorted({int(j * (n - 1) / (most - 1)) for j in range(most)}) if most > 1 else [0]


def unsure(pmap: np.ndarray) -> float:
    """``1 - 2 mean(|p - 0.5|)`` of a face probability map in ``[0, 1]``."""
    return float(1.0 - 2.0 * np.abs(pmap.astype(np.float64) - 0.5).mean())


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one size; 1 for two empty masks."""
    if a.shape != b.shape:
        return 0.0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def jump_scores(masks: Sequence[np.ndarray]) -> list[float]:
    """``1 - min(IoU with the previous, IoU with the next)`` for a sequence of masks (ends: their one neighbour)."""
    n = len(masks)
    ious = [mask_iou(masks[k], masks[k + 1]) for k in range(n - 1)]
    out = []
    for k in range(n):
        near = ([ious[k - 1]] if k > 0 else []) + ([ious[k]] if k < n - 1 else [])
        out.append(1.0 - min(near) if near else 0.0)
    return out


def rank(
    n: int,
    k_start: int,
    labelled: Sequence[int],
    scanned: Sequence[int] = (),
    scores: Sequence[float] = (),
    limit: int = 12,
) -> list[dict]:
    """The suggested frames, best first: ``{"frame", "reason", "score"}`` dicts.

    Args:
        n: Frames in the source.
        k_start: ``START_FRAMES``.
        labelled: Frames already labelled.
        scanned: Scanned frame indices, ascending (positions define neighbourhoods).
        scores: ``unsure + jump`` per scanned frame.
        limit: Longest list returned.
    """
    done = set(labelled)
    out = [{"frame": i, "reason": "start", "score": None} for i in start_frames(n, k_start) if i not in done]
    listed = done | {d["frame"] for d in out}
    position = {f: p for p, f in enumerate(scanned)}
    blocked = set()
    for f in listed:
        if f in position:
            p = position[f]
            blocked.update(range(p - NEIGHBOURHOOD, p + NEIGHBOURHOOD + 1))
    # Stable: equal scores keep frame order.
    order = sorted(range(len(scanned)), key=lambda p: -scores[p])
    for p in order:
        if len(out) >= limit:
            break
        if p in blocked or scanned[p] in done:
            continue
        out.append({"frame": int(scanned[p]), "reason": "unsure", "score": round(float(scores[p]), 6)})
        blocked.update(range(p - NEIGHBOURHOOD, p + NEIGHBOURHOOD + 1))
    return out[:limit]
