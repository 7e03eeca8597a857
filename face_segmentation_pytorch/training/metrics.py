"""Segmentation scores: the seed's per-image IoU and the usual companions.

The seed's table (the LinkNet34 work's 92.7 / 94.4 test IoU) computes, per
image, ``|P and G| / (|P or G| + 1e-6)`` with ``P = logit > 0`` and averages
over images. :func:`mean_iou` is exactly that. Note what the ``1e-6`` does to
an image with no face in either the prediction or the ground truth: it scores
``0 / 1e-6 = 0``, not 1, so a data set with face-free images has a mean IoU
below what a perfect model gets. :func:`dataset_iou` (total intersection over
total union) has no such edge and weights images by their face area.

Everything here takes boolean masks as NumPy arrays or torch tensors, one
image ``(H, W)`` or a batch ``(N, H, W)`` (any extra leading axes are
flattened into the batch), and returns Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "IOU_EPS",
    "confusion_counts",
    "iou",
    "iou_per_image",
    "mean_iou",
    "dataset_iou",
    "f1_score",
    "pixel_accuracy",
    "SegmentationScores",
]

#: Added to the union in the seed's per-image IoU (its evaluation notebook).
IOU_EPS = 1e-6


def _as_array(x, name: str) -> np.ndarray:
    """A mask or batch of masks as a NumPy array of at least two dimensions."""
    try:  # torch tensors without importing torch here
        x = x.detach().cpu().numpy()
    except AttributeError:
        x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected a mask (H, W) or a batch (N, H, W), got shape {x.shape}")
    return x


def _as_bool_batch(x: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(..., H, W)`` masks as a boolean ``(N, H*W)`` array."""
    x = x if x.dtype == bool else x != 0
    return x.reshape(-1, x.shape[-2] * x.shape[-1])


def confusion_counts(pred, gt) -> np.ndarray:
    """Per image: true positives, false positives, false negatives, true negatives.

    Args:
        pred: Predicted masks, ``(H, W)`` or ``(N, H, W)``; non-zero (or True) is face.
        gt: Ground-truth masks of the same shape.

    Returns:
        ``(N, 4)`` int64 array of ``tp, fp, fn, tn`` (``N = 1`` for one image).

    Raises:
        ValueError: The shapes differ.
    """
    p = _as_array(pred, "pred")
    g = _as_array(gt, "gt")
    # Shapes are compared before flattening: (300, 400) against (400, 300) has
    # as many pixels but is another image.
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: pred {tuple(p.shape)}, gt {tuple(g.shape)}")
    p, g = _as_bool_batch(p), _as_bool_batch(g)
    tp = np.count_nonzero(p & g, axis=1)
    fp = np.count_nonzero(p & ~g, axis=1)
    fn = np.count_nonzero(~p & g, axis=1)
    tn = p.shape[1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _iou_from_counts(c: np.ndarray) -> np.ndarray:
    tp, fp, fn = c[:, 0], c[:, 1], c[:, 2]
    return tp / (tp + fp + fn + IOU_EPS)


def iou_per_image(pred, gt) -> list[float]:
    """The seed's IoU of each image: ``|P and G| / (|P or G| + 1e-6)``."""
    return [float(v) for v in _iou_from_counts(confusion_counts(pred, gt))]


def iou(pred, gt) -> float:
    """IoU of one image, the seed's way: ``|P and G| / (|P or G| + 1e-6)``.

    A batch gives the mean over its images (:func:`mean_iou`). An image with
    no face in either mask scores 0.
    """
    return mean_iou(pred, gt)


def mean_iou(pred, gt) -> float:
    """Mean over images of the per-image IoU, exactly as the seed's table computes it."""
    return float(np.mean(_iou_from_counts(confusion_counts(pred, gt))))


def _dataset_iou(c: np.ndarray) -> float:
    tp, fp, fn = (int(v) for v in c[:, :3].sum(axis=0))
    union = tp + fp + fn
    return tp / union if union else 0.0


def dataset_iou(pred, gt) -> float:
    """Total intersection over total union, over all images (0 when both are empty everywhere)."""
    return _dataset_iou(confusion_counts(pred, gt))


def _f1(c: np.ndarray) -> float:
    tp, fp, fn = (int(v) for v in c[:, :3].sum(axis=0))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def f1_score(pred, gt) -> float:
    """Pixel F1 (Dice) over all images: ``2 TP / (2 TP + FP + FN)`` (0 when both are empty)."""
    return _f1(confusion_counts(pred, gt))


def _accuracy(c: np.ndarray) -> float:
    total = int(c.sum())
    return (int(c[:, 0].sum()) + int(c[:, 3].sum())) / total if total else 0.0


def pixel_accuracy(pred, gt) -> float:
    """Share of pixels, over all images, where prediction and ground truth agree."""
    return _accuracy(confusion_counts(pred, gt))


@dataclass
class SegmentationScores:
    """Accumulates per-image counts; :meth:`summary` gives every score at once.

    Use it where images arrive one batch at a time (validation, evaluation of
    a folder) so that nothing but four integers per image is kept.
    """

    names: list[str] = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)

    def update(self, pred, gt, names: list[str] | None = None) -> np.ndarray:
        """Add one image or a batch; returns its ``(N, 4)`` counts."""
        c = confusion_counts(pred, gt)
        if names is None:
            names = [str(len(self.names) + i) for i in range(len(c))]
        if len(names) != len(c):
            raise ValueError(f"{len(names)} names for {len(c)} images")
        self.names.extend(names)
        self.counts.append(c)
        return c

    def _all(self) -> np.ndarray:
        return np.concatenate(self.counts) if self.counts else np.zeros((0, 4), np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def summary(self) -> dict:
        """``images``, ``mean_iou``, ``dataset_iou``, ``f1``, ``pixel_accuracy``,
        ``empty_both`` (images with no face in either mask, each scoring 0 in
        ``mean_iou``) and the pixel counts ``tp``, ``fp``, ``fn``, ``tn``."""
        c = self._all()
        per = _iou_from_counts(c)
        tot = c.sum(axis=0)
        return {
            "images": int(len(c)),
            "mean_iou": float(per.mean()) if len(c) else 0.0,
            "dataset_iou": _dataset_iou(c),
            "f1": _f1(c),
            "pixel_accuracy": _accuracy(c),
            "empty_both": int(np.count_nonzero(c[:, 0] + c[:, 1] + c[:, 2] == 0)),
            "tp": int(tot[0]),
            "fp": int(tot[1]),
            "fn": int(tot[2]),
            "tn": int(tot[3]),
        }

    def per_image(self) -> list[dict]:
        """One dict per image: ``name``, ``iou``, ``tp``, ``fp``, ``fn``, ``tn``."""
        c = self._all()
        per = _iou_from_counts(c)
        return [
            {"name": n, "iou": float(v), "tp": int(r[0]), "fp": int(r[1]), "fn": int(r[2]), "tn": int(r[3])}
            for n, v, r in zip(self.names, per, c)
        ]
