"""Pause points for tests: make the video command stop where a test decides.

Ctrl-C at a given moment (while frames are processed, while the output is
finished) must be testable without racing the machine. With
``FSP_VIDEO_PAUSE_AT`` set (``frame:3``, ``finishing``, or both, comma
separated) and ``FSP_VIDEO_PAUSE_FIFO`` naming a FIFO, the command prints
``<prog>: paused at <point>`` on stderr when it reaches such a point and waits
until a line can be read from the FIFO. The test reads stderr up to that line,
sends its signals, and writes to the FIFO to let the command go on. Unset, a
pause point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import sys

__all__ = ["pause"]

_AT = "FSP_VIDEO_PAUSE_AT"
_FIFO = "FSP_VIDEO_PAUSE_FIFO"


def _points() -> frozenset[str]:
    return frozenset(p.strip() for p in os.environ.get(_AT, "").split(",") if p.strip())


def pause(point: str, prog: str = "face_segmentation_pytorch.video") -> None:
    """Wait at ``point`` when the environment asks for it (see the module's text)."""
    if not os.environ.get(_AT) or point not in _points():
        return
    fifo = os.environ.get(_FIFO)
    if not fifo:
        return
    print(f"{prog}: paused at {point}", file=sys.stderr, flush=True)
    with open(fifo, encoding="utf-8") as f:  # blocks until the test opens it for writing
        f.readline()
