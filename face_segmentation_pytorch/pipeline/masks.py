"""Moved to :mod:`face_segmentation_pytorch.files.masks`; this import path keeps working (the same module object)."""

import sys

from ..files import masks as _moved

sys.modules[__name__] = _moved
