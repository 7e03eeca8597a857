"""Moved to :mod:`face_segmentation_pytorch.segmentation.crop`; this import path keeps working (the same module object)."""

import sys

from ..segmentation import crop as _moved

sys.modules[__name__] = _moved
