"""The earlier PyTorch port's module path ``face_segmentation_pytorch.model``.

It exists so that scripts written for that port (``from
face_segmentation_pytorch.model import FaceSegmentationNet``) keep running. The
network itself lives in :mod:`face_segmentation_pytorch.models.fcn8s`.
"""

from .models.fcn8s import BGR_MEAN, FaceSegmentationNet, scores_to_mask, scores_to_pmap

__all__ = ["BGR_MEAN", "FaceSegmentationNet", "scores_to_mask", "scores_to_pmap"]
