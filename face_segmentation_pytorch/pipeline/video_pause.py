"""Pause points for tests: make the video command stop where a test decides.

Ctrl-C at a given moment (while frames are processed, while the output is
finished) must be testable without racing the machine. With
``FSP_VIDEO_PAUSE_AT`` set (``frame:3``, ``finishing``, or both, comma
separated) and ``FSP_VIDEO_PAUSE_GATE`` naming a folder, the command prints
``<prog>: paused at <point>`` on stderr when it reaches such a point and waits
until the test creates the file ``<point>`` in that folder (``:`` written as
``_``: ``frame_3``). The test reads stderr up to that line, sends its signals,
and creates the file to let the command go on. Unset, a pause point costs one
dictionary lookup.

The wait looks for the file every tenth of a second rather than blocking in one
call: a signal handled by the main thread must run while it waits, whichever
thread the signal was delivered to (see :mod:`.video_worker`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

__all__ = ["pause", "gate_name"]

_AT = "FSP_VIDEO_PAUSE_AT"
_GATE = "FSP_VIDEO_PAUSE_GATE"


def gate_name(point: str) -> str:
    """The file that lets the command go on from ``point``."""
    return point.replace(":", "_")


def pause(point: str, prog: str = "face_segmentation_pytorch.video") -> None:
    """Wait at ``point`` when the environment asks for it (see the module's text)."""
    points = os.environ.get(_AT)
    if not points or point not in {p.strip() for p in points.split(",")}:
        return
    folder = os.environ.get(_GATE)
    if not folder:
        return
    print(f"{prog}: paused at {point}", file=sys.stderr, flush=True)
    gate = Path(folder) / gate_name(point)
    while not gate.exists():
        time.sleep(0.05)
