"""Moved to :mod:`face_segmentation_pytorch.jobs.ray_engine`; this import path keeps working (the same module object)."""

import sys

from ..jobs import ray_engine as _moved

sys.modules[__name__] = _moved
