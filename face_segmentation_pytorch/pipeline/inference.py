"""Moved to :mod:`face_segmentation_pytorch.segmentation.inference`; this import path keeps working (the same module object)."""

import sys

from ..segmentation import inference as _moved

sys.modules[__name__] = _moved
