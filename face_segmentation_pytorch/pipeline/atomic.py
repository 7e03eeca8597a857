"""Moved to :mod:`face_segmentation_pytorch.files.atomic`; this import path keeps working (the same module object)."""

import sys

from ..files import atomic as _moved

sys.modules[__name__] = _moved
