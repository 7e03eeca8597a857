"""A writer thread behind a bounded queue, for the video command's outputs.

The network runs in the main thread; drawing, encoding and PNG writing run in
such threads, so that it never waits for them, and memory stays bounded when
they are slower. The thread also runs the closing step (``on_end``): the file
is closed by the thread that wrote it, after the last frame, so nothing the
main thread does (a Ctrl-C included) can close it under a frame being written.

The main thread never waits without a time limit (:func:`wait_for`): Linux
hands a Ctrl-C to any thread of the process (FFmpeg's, OpenMP's, these), and
Python runs its handler only in the main thread, at its next step; a main
thread blocked in a plain ``join()`` or ``put()`` would not take that step
until the wait ended on its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["Worker", "wait_for", "TICK_S"]

_END = object()
#: Longest wait of the main thread between two looks at pending signals.
TICK_S = 0.1


def wait_for(step) -> None:
    """Call ``step(timeout)`` with :data:`TICK_S` until it returns True: a wait
    that lets Python run a signal handler (Ctrl-C) within a tick, whichever
    thread the signal was delivered to."""
    while not step(TICK_S):
        pass


def _put_within(q: queue.Queue, item):
    def step(timeout: float) -> bool:
        try:
            q.put(item, timeout=timeout)
            return True
        except queue.Full:
            return False

    return step


class Worker:
    """Apply ``handle`` to queued items in order in a thread; ``on_end`` at the end.

    ``put`` blocks while ``size`` items wait and raises the first error
    ``handle`` met (later items are dropped); :meth:`finish` queues the end,
    waits for ``on_end(failed)`` to have run, and raises the first error.

    Args:
        handle: Called with each item, in the thread.
        name: The thread's name.
        size: Items waiting at most.
        on_end: Called once in the thread after the last item, with ``True``
            when the end was an abort or ``handle`` failed; its error is raised
            by :meth:`finish` too.
    """

    def __init__(
        self, handle: Callable, name: str, size: int = 8, on_end: Callable[[bool], None] | None = None
    ) -> None:
        self._handle = handle
        self._on_end = on_end
        self._q: queue.Queue = queue.Queue(maxsize=size)
        self.error: BaseException | None = None
        self._aborted = False
        self._end_sent = False
        self.count = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _END:
                break
            if self.error is not None or self._aborted:
                continue  # drain after a failure or an abort; the owner reports it
            try:
                self._handle(item)
                self.count += 1
            except BaseException as e:  # noqa: BLE001 - reported through put/finish
                self.error = e
        if self._on_end is not None:
            try:
                self._on_end(self._aborted or self.error is not None)
            except BaseException as e:  # noqa: BLE001 - reported through finish
                if self.error is None:
                    self.error = e

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        wait_for(_put_within(self._q, item))

    def finish(self, abort: bool = False) -> None:
        """Let the thread write what is queued (or, ``abort``, just close) and
        wait for it to end. Safe to call again after an interrupted wait: it
        waits on for the same end."""
        if not self._end_sent:
            self._aborted = abort
            wait_for(_put_within(self._q, _END))
            self._end_sent = True

        def joined(timeout: float) -> bool:
            self._thread.join(timeout)
            return not self._thread.is_alive()

        wait_for(joined)
        if self.error is not None:
            raise self.error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
