"""Moved to :mod:`face_segmentation_pytorch.weights.registry`; this import path keeps working (the same module object)."""

import sys

from ..weights import registry as _moved

sys.modules[__name__] = _moved
