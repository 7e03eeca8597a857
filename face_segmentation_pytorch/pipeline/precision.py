"""Moved to :mod:`face_segmentation_pytorch.segmentation.precision`; this import path keeps working (the same module object)."""

import sys

from ..segmentation import precision as _moved

sys.modules[__name__] = _moved
