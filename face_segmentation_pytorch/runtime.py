"""Process settings that OpenMP and PyTorch read once, when torch starts.

Imported by the package's ``__init__`` before torch (it imports nothing heavy),
so that ``import face_segmentation_pytorch`` and every command get them. Each
is set with ``os.environ.setdefault``: a value the user set stands, and nothing
is set once torch is running (too late to take effect, and child processes
would then run with other settings than this one).

``OMP_WAIT_POLICY=PASSIVE``: between parallel regions PyTorch's OpenMP threads
sleep instead of spinning. LinkNet34's forward is ~60 short parallel regions;
on a busy machine spinning threads take the cores the other threads need (the
video command's reader and writer, other processes). Measured with
``benchmarks/cpu.py`` (its OpenMP table; docs/performance.md, "CPU: fp32, bf16,
peers") on 2 cores with other jobs running: a LinkNet34 forward at 256x256 in
90 ms with PASSIVE against 280-320 ms with ACTIVE or OpenMP's default, and with
one core kept busy by another process 111 against 710-760 ms. On a quiet
machine spinning is faster (45 against 65 ms in a quiet spell of an earlier
run); ``OMP_WAIT_POLICY=ACTIVE`` gets that back where nothing else runs.

The thread count stays PyTorch's (one per core).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["DEFAULTS", "apply_defaults"]

#: What the package sets before torch starts, unless already set.
DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`DEFAULTS` in ``environ`` (``os.environ``) where unset, if torch has not started.

    Returns:
        The variables this call set (empty when torch was already imported or
        the user had set them all).
    """
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    done = {}
    for key, value in DEFAULTS.items():
        if key not in env:
            env[key] = value
            done[key] = value
    return done
