"""Moved to :mod:`face_segmentation_pytorch.jobs.workers`; this import path keeps working (the same module object)."""

import sys

from ..jobs import workers as _moved

sys.modules[__name__] = _moved
