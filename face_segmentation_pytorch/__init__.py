"""Face segmentation in PyTorch: two model families behind one API and CLI.

- FCN-8s (VGG-16) of Nirkin et al. (2018), equal to the Caffe runtime
  (:class:`FaceSegmentationNet`, weights ``fcn8s_500``, ``fcn8s_300_no_aug``, ``fcn8s_500_port``);
- LinkNet34 of the OneFlow face segmentation work (:class:`LinkNet34`,
  weights ``linknet34_oneflow``), its OneFlow checkpoints read without OneFlow.

:class:`FaceSegmenter` runs either by weights name. Typical low-level use::

    import torch
    from PIL import Image
    import face_segmentation_pytorch as fsp

    model = fsp.FaceSegmentationNet()
    fsp.load_model_parameters(model, "weights/")   # finds or downloads, verifies
    model.eval()
    img = Image.open("face.jpg").convert("RGB")
    with torch.no_grad():
        t = model.img_to_input(img, resize=True).unsqueeze(0)
        pmap = model(t, as_pmap=True)[0]           # (500, 500) face probability
"""

import os as _os
import sys as _sys

# PyTorch decides once, at its first allocation, whether large CPU tensors are
# placed on transparent huge pages. With them a 500x500 forward takes ~20x
# fewer page faults and about 15% less time (README, "Performance"). So ask
# for them unless torch is already running or the user has chosen.
if "torch" not in _sys.modules:
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # OpenMP's threads sleep between parallel regions instead of spinning, unless
    # the user chose (runtime.py: on a busy machine spinning cost several times).
    from .runtime import apply_defaults as _apply_runtime_defaults  # imports no torch

    _apply_runtime_defaults()

from .errors import (
    CaffeModelError,
    ConfigError,
    DownloadError,
    FaceSegmentationError,
    ImageReadError,
    WeightsError,
)
from .files.imageio import load_image
from .formats.caffe import convert_caffemodel, load_caffemodel_as_statedict, read_caffemodel
from .formats.oneflow import load_oneflow_checkpoint
from .models.fcn8s import BGR_MEAN, FaceSegmentationNet, scores_to_mask, scores_to_pmap
from .models.linknet import LinkNet34
from .pipeline.video import segment_video
from .segmentation.inference import pmap_to_mask, pmap_to_uint8, predict_pmaps
from .segmentation.postprocess import dilate, feather, fill_holes, full_postprocess, largest_component, smooth
from .segmentation.preprocess import image_to_input, resize_pmap
from .segmentation.render import cutout, gallery, overlay
from .segmentation.segmenter import FaceSegmenter, Segmentation

# Training and scores: torch and NumPy only at import (Pillow, omegaconf load when a run starts).
from .training import (
    SegmentationScores,
    Trainer,
    TrainResult,
    dataset_iou,
    f1_score,
    iou,
    iou_per_image,
    mean_iou,
    pixel_accuracy,
    train,
)
from .utils import plt_debug  # also makes fsp.utils (the earlier port's module) an attribute
from .weights.families import FAMILIES, Preprocessing
from .weights.registry import (
    DEFAULT_WEIGHTS,
    WEIGHTS,
    Weights,
    apply_state_dict,
    default_params_dir,
    find_or_download_state_dict,
    load_model_parameters,
    load_state_dict_file,
)

__version__ = "0.2.0"

__all__ = [
    "SegmentationScores",
    "Trainer",
    "TrainResult",
    "dataset_iou",
    "f1_score",
    "iou",
    "iou_per_image",
    "mean_iou",
    "pixel_accuracy",
    "train",
    "BGR_MEAN",
    "CaffeModelError",
    "ConfigError",
    "DEFAULT_WEIGHTS",
    "DownloadError",
    "FaceSegmentationError",
    "FaceSegmentationNet",
    "FaceSegmenter",
    "FAMILIES",
    "LinkNet34",
    "Preprocessing",
    "load_oneflow_checkpoint",
    "Segmentation",
    "segment_video",
    "cutout",
    "dilate",
    "feather",
    "fill_holes",
    "full_postprocess",
    "gallery",
    "largest_component",
    "overlay",
    "smooth",
    "ImageReadError",
    "WEIGHTS",
    "Weights",
    "WeightsError",
    "apply_state_dict",
    "convert_caffemodel",
    "default_params_dir",
    "find_or_download_state_dict",
    "image_to_input",
    "load_caffemodel_as_statedict",
    "load_image",
    "load_model_parameters",
    "load_state_dict_file",
    "plt_debug",
    "pmap_to_mask",
    "pmap_to_uint8",
    "predict_pmaps",
    "read_caffemodel",
    "resize_pmap",
    "scores_to_mask",
    "scores_to_pmap",
]
