"""Progress on stderr: a live bar where a person watches, a few plain lines elsewhere.

On a terminal this is a tqdm bar. When stderr is a file or a pipe (CI,
``nohup``, ``2> log``) carriage-return frames would fill the log, so progress
becomes plain lines instead: one at the start, one each time another
``step_percent`` of the work is done or ``every_s`` seconds have passed, and
one at the end.
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress_bar", "LineProgress"]


def _fmt(n: float, unit: str) -> str:
    if unit == "B":
        for u in ("B", "KiB", "MiB", "GiB"):
            if abs(n) < 1024 or u == "GiB":
                return f"{n:.0f} {u}" if u == "B" else f"{n:.1f} {u}"
            n /= 1024
    return f"{int(n)}"


class LineProgress:
    """tqdm's ``update``/``close`` interface, writing whole lines.

    Args:
        total: Amount of work, or ``None`` when unknown.
        desc: What is being done, e.g. ``downloading face_seg_fcn8s.zip``.
        unit: ``"B"`` (shown in KiB/MiB) or a word such as ``"img"``.
        file: Stream to write to (stderr).
        step_percent: Print a line each time this much more is done.
        every_s: Print a line at least this often while work goes on.
    """

    def __init__(self, total, desc, unit, file, step_percent=10, every_s=30.0):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.step, self.every = step_percent, every_s
        self.n = 0
        self._start = self._last_time = time.monotonic()
        self._next_pct = step_percent
        self._closed = False
        self._say(f"{desc}: started" + (f" ({self._amount(total)})" if total else ""))

    def _amount(self, n) -> str:
        return _fmt(n, self.unit) + ("" if self.unit == "B" else f" {self.unit}")

    def _say(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:
            pct = 100.0 * self.n / self.total
            if pct >= self._next_pct and self.n < self.total:
                while self._next_pct <= pct:
                    self._next_pct += self.step
                self._last_time = now
                self._say(f"{self.desc}: {pct:.0f}% ({self._amount(self.n)} of {self._amount(self.total)})")
                return
        if now - self._last_time >= self.every:
            self._last_time = now
            of = f" of {self._amount(self.total)}" if self.total else ""
            self._say(f"{self.desc}: {self._amount(self.n)}{of}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._say(f"{self.desc}: {self._amount(self.n)} in {time.monotonic() - self._start:.1f} s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress_bar(total, *, desc: str, unit: str, enabled: bool = True, file=None):
    """A progress reporter with ``update(n)`` and ``close()`` (also a context manager).

    Args:
        total: Amount of work, or ``None`` when unknown.
        desc: Label shown with it (the real file name for downloads).
        unit: ``"B"`` for bytes, else a word such as ``"img"``.
        enabled: ``False`` prints nothing at all (``PROGRESS=false``).
        file: Stream, default ``sys.stderr``.
    """
    file = sys.stderr if file is None else file
    if not enabled:
        return _Silent()
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        kwargs = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        return tqdm(total=total, desc=desc, unit=unit, file=file, **kwargs)
    return LineProgress(total, desc, unit, file)
