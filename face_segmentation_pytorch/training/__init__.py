"""Training and scoring: ``python -m face_segmentation_pytorch.train`` / ``.evaluate`` and their API.

- :func:`train` / :class:`Trainer`: the LinkNet34 recipe (soft-Jaccard loss,
  SGD, flips and rotations) for either family, with exact resume.
- :mod:`.metrics`: :func:`iou`, :func:`mean_iou` (the seed's table),
  :func:`dataset_iou`, :func:`f1_score`, :func:`pixel_accuracy`.
- :mod:`.data`: the data layouts, their checks, augmentation, synthetic data.
- :mod:`.losses`: the recipe's loss.

Only torch and NumPy are imported here (both already loaded by the package);
Pillow, omegaconf and the weights machinery load when a run starts.
"""

from .losses import SegmentationLoss, face_logit, soft_jaccard_loss
from .metrics import (
    SegmentationScores,
    confusion_counts,
    dataset_iou,
    f1_score,
    iou,
    iou_per_image,
    mean_iou,
    pixel_accuracy,
)
from .trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = [
    "SegmentationLoss",
    "SegmentationScores",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "confusion_counts",
    "dataset_iou",
    "f1_score",
    "face_logit",
    "iou",
    "iou_per_image",
    "mean_iou",
    "pixel_accuracy",
    "soft_jaccard_loss",
    "train",
]
