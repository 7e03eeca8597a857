"""Moved to :mod:`face_segmentation_pytorch.segmentation.segmenter`; this import path keeps working (the same module object)."""

import sys

from ..segmentation import segmenter as _moved

sys.modules[__name__] = _moved
