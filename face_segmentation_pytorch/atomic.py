"""Writing files so that a final name only ever holds a whole file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "save_atomic", "remove_if_exists", "ensure_writable_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    A crash, Ctrl-C or full disk never leaves a half-written file under
    ``path``, and the temporary file is removed whatever happens.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_writable_dir(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and check a file can be made in it.

    Raises:
        OSError: It cannot be created or written to.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def save_atomic(path: str | os.PathLike, write) -> None:
    """Call ``write(file object)`` on a temporary file beside ``path``, then rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def remove_if_exists(path: str | os.PathLike) -> None:
    """Delete a file; a missing one is fine."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
