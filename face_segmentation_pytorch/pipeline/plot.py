"""Moved to :mod:`face_segmentation_pytorch.segmentation.plot`; this import path keeps working (the same module object)."""

import sys

from ..segmentation import plot as _moved

sys.modules[__name__] = _moved
