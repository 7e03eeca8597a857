"""Moved to :mod:`face_segmentation_pytorch.segmentation.render`; this import path keeps working (the same module object)."""

import sys

from ..segmentation import render as _moved

sys.modules[__name__] = _moved
