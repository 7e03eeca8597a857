"""An input file that holds a run at a point the test decides.

Tests that interrupt or kill a run must not race the machine: "send the signal
once a file exists" fails on a machine fast enough to finish first. A
:class:`FifoImage` is a named pipe with an image's name among the inputs. The
run's reader blocks on it; :meth:`FifoImage.wait_until_read` returns once the
reader has opened it, and nothing after that image can finish until the test
calls :meth:`FifoImage.release` (with real bytes, or with none: an empty file,
which the run reports as unreadable).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

__all__ = ["FifoImage", "gated_image_list", "wait_for_outputs"]


class FifoImage:
    """A named pipe standing in for one image file.

    Args:
        path: Where the pipe goes (an image name in the run's input folder).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        os.mkfifo(self.path)
        self._fd: int | None = None
        self._opened = threading.Event()
        # Opening a pipe for writing blocks until a reader opens it: do that
        # in a thread, so the test learns exactly when the run reached the file.
        self._thread = threading.Thread(target=self._open, daemon=True)
        self._thread.start()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY)
        self._opened.set()

    def wait_until_read(self, proc, timeout: float = 300) -> None:
        """Return once the run has opened the file (it is now blocked on it).

        Raises:
            AssertionError: The process ended first, or the timeout passed.
        """
        step = 0.2
        waited = 0.0
        while not self._opened.wait(step):
            waited += step
            assert proc.poll() is None, f"the run ended before reading {self.path.name}: {proc.communicate()[1]}"
            assert waited < timeout, f"the run did not reach {self.path.name} in {timeout} s"

    def release(self, data: bytes = b"") -> None:
        """Let the reader go on: write ``data`` (an image's bytes, or nothing) and close."""
        self._opened.wait()
        try:
            if data:
                os.write(self._fd, data)
        finally:
            os.close(self._fd)

    def replace_with(self, data: bytes) -> None:
        """Swap the pipe for a regular file holding ``data`` (for the run that resumes)."""
        self.path.unlink()
        self.path.write_bytes(data)


def gated_image_list(folder: Path, photo, n: int = 40) -> tuple[Path, FifoImage]:
    """``n - 1`` photos ``img00.png...`` in ``folder/many`` and, last, a :class:`FifoImage`;
    returns a list file naming all ``n`` (a folder lists regular files only) and the pipe.

    Args:
        folder: Where ``many/`` and ``images.txt`` go.
        photo: ``photo(h, w, seed) -> PIL.Image``, the test's image maker.
        n: How many inputs in all.
    """
    src = folder / "many"
    src.mkdir()
    for i in range(n - 1):
        photo(300, 300, i).save(src / f"img{i:02d}.png")
    last = FifoImage(src / f"img{n - 1:02d}.png")
    listed = folder / "images.txt"
    listed.write_text("".join(f"many/img{i:02d}.png\n" for i in range(n)))
    return listed, last


def wait_for_outputs(out: Path, proc, count: int = 1, pattern: str = "*__heatmap.png", timeout: float = 300) -> None:
    """Wait for ``count`` outputs the run is bound to write (not a race: nothing
    is sent to the run until they exist).

    Raises:
        AssertionError: The process ended first, or the timeout passed.
    """
    deadline = time.monotonic() + timeout
    while not (out.exists() and len(list(out.glob(pattern))) >= count):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"fewer than {count} outputs in {timeout} s"
        time.sleep(0.05)
