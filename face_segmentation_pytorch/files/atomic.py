"""Writing files so that a final name only ever holds a whole file.

Files are made with the permissions a plain ``open(path, "w")`` gives under the
caller's umask (``0o666 & ~umask``, usually ``-rw-r--r--``), not the private
``0o600`` of :func:`tempfile.mkstemp`: results are meant to be read by a web
server, a service account or a colleague.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = [
    "atomic_path",
    "save_atomic",
    "remove_if_exists",
    "ensure_writable_dir",
    "remove_empty_dirs",
]


def _create_temp_beside(path: Path) -> str:
    """Create an empty, new, hidden file beside ``path`` and return its name.

    ``os.open`` with mode 0o666 lets the kernel apply the process umask, as
    ``open(path, "w")`` does; ``O_EXCL`` keeps the name ours alone.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(tmp)
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    A crash, Ctrl-C or full disk never leaves a half-written file under
    ``path``, and the temporary file is removed whatever happens. The file
    gets the permissions the umask allows (``0o666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp_beside(path)
    # What the umask gave the new file; a writer that recreates the file under
    # its own mode (safetensors' save_file makes it 0o600) gets it back.
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_writable_dir(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` if needed and check a file can be made in it.

    Returns:
        The folders this call created, outermost first (empty when ``folder``
        existed), so a caller whose run then fails can take them away again
        with :func:`remove_empty_dirs`.

    Raises:
        OSError: It cannot be created or written to (nothing created is left).
    """
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    missing.reverse()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        remove_empty_dirs(missing)
        raise
    return missing


def remove_empty_dirs(folders: list[Path]) -> None:
    """Remove those of ``folders`` that are empty, innermost first; others stay."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
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
