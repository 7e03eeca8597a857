"""Verified downloads and safe archive extraction.

Modelled on ``torch.hub.download_url_to_file``: the body goes to a temporary
file in the target folder while its sha256 is computed, a progress bar goes to
stderr, and only a complete, verified file is moved to its final name. Any
failure removes the temporary file and raises :class:`DownloadError` with one
line that says what happened and what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import DownloadError
from ..files.atomic import atomic_path, ensure_writable_dir, remove_empty_dirs
from ..files.progress import progress_bar

__all__ = ["download_url_to_file", "extract_zip_member", "sha256_of_file", "shown_folder"]

_CHUNK = 1 << 20


def sha256_of_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url_to_file(
    url: str,
    dst: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    label: str | None = None,
    by_hand: str | None = None,
) -> str:
    """Download ``url`` to ``dst`` atomically, verifying its size and sha256.

    Args:
        url: http(s) or file URL.
        dst: Final path; its folder is created if needed.
        sha256: Expected hex digest; ``None`` skips the check (the digest is
            still returned so the caller can report it).
        progress: Show progress on stderr (a bar on a terminal, a few plain
            lines otherwise).
        timeout: Seconds to wait for the server on each read.
        label: File name shown with the progress (default: ``dst``'s name),
            so a caller that downloads to a hidden staging name can show the
            name the user knows.
        by_hand: What the user can do instead when the server cannot be
            reached (the end of the error line, after "or "); it should name
            the file and the folder. Default: download ``url`` yourself and
            put it in ``dst``'s folder under ``dst``'s name.

    Returns:
        The hex sha256 of the downloaded file.

    Raises:
        DownloadError: Network or HTTP failure, a body shorter than its
            Content-Length, or a hash mismatch. Nothing is left at ``dst``,
            and a folder this call created is removed again.
    """
    dst = Path(dst)
    try:
        created = ensure_writable_dir(dst.parent)
    except OSError as e:
        raise DownloadError(
            f"cannot write to {dst.parent} ({e.strerror or e}); choose a writable folder (MODEL_PARAMS_DIR=...)"
        ) from None
    if by_hand is None:
        by_hand = f"download the file from {url} yourself and put it in {shown_folder(dst.parent)} as {dst.name}"
    try:
        return _download(url, dst, sha256, progress, timeout, label or dst.name, by_hand)
    except BaseException:
        remove_empty_dirs(created)
        raise


def shown_folder(folder: str | os.PathLike) -> str:
    """``folder`` as a user typed it, with a trailing separator (``weights/``), for error lines."""
    text = os.fspath(folder)
    return text if text.endswith(os.sep) else text + os.sep


def _download(url: str, dst: Path, sha256: str | None, progress: bool, timeout: float, label: str, by_hand: str) -> str:
    # For failures to reach the server; a short or damaged body says "try again" instead.
    fix = f"check the URL and your connection, or {by_hand}"
    try:
        h = hashlib.sha256()
        received = 0
        # Verification happens inside the block, so a bad body never gets the final name.
        with atomic_path(dst) as tmp:
            with open(tmp, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": "face_segmentation_pytorch"})
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with progress_bar(
                        total, desc=f"downloading {label}", unit="B", enabled=progress, file=sys.stderr
                    ) as bar:
                        while True:
                            chunk = resp.read(_CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                            h.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            if total is not None and received != total:
                raise DownloadError(f"download of {url} stopped after {received} of {total} bytes; try again")
            digest = h.hexdigest()
            if sha256 is not None and digest != sha256.strip().lower():
                raise DownloadError(
                    f"sha256 mismatch for {url}: expected {sha256.strip().lower()}, got {digest}; "
                    "the file is damaged or changed upstream: try again, or pin the new hash "
                    "(WEIGHTS_SHA256=...) only if you trust its source"
                )
        return digest
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}; {fix}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {url} failed: {e.reason}; {fix}") from None
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"download of {url} stopped after {len(e.partial)} more bytes than expected "
            f"({e.expected} missing); try again"
        ) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise DownloadError(f"download of {url} failed: {e}; {fix}") from None


def _is_unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def extract_zip_member(
    archive: str | os.PathLike,
    dest: str | os.PathLike | Callable[[str], str | os.PathLike],
    *,
    member: str | None,
    suffix: str | tuple[str, ...],
) -> Path:
    """Extract one file of a zip archive to ``dest``, atomically.

    The archive is refused whole if any entry would land outside the target
    folder (absolute paths, ``..``, drive letters). The member is written to a
    temporary name, its CRC is checked by reading it to the end, and only then
    is it renamed to ``dest``.

    Args:
        archive: The zip file.
        dest: Final path of the extracted file, or a function of the chosen
            entry's name that returns it (so the caller can keep its suffix).
        member: Entry name to extract. When it is absent (or ``None``) the
            only entry ending in one of ``suffix`` is taken.
        suffix: File ending(s) to look for when ``member`` is not found.

    Returns:
        The path written.

    Raises:
        DownloadError: Not a zip, an unsafe entry, the member missing or
            ambiguous, or corrupt data.
    """
    archive = Path(archive)
    suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a valid zip archive ({e}); delete it and download again") from None
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        unsafe = [n for n in names if _is_unsafe(n)]
        if unsafe:
            raise DownloadError(
                f"{archive}: refusing to extract entry {unsafe[0]!r}, which points outside "
                "the target folder; the archive is not the published one"
            )
        if member is None or member not in names:
            matches = [n for n in names if n.lower().endswith(suffixes)]
            if len(matches) != 1:
                wanted = member or "one " + " or ".join(f"*{x}" for x in suffixes) + " file"
                raise DownloadError(
                    f"{archive}: expected {wanted} in the archive, "
                    f"found {', '.join(names[:6]) or 'nothing'}; check WEIGHTS_URL"
                )
            member = matches[0]
        dest = Path(dest(member) if callable(dest) else dest)
        try:
            # Reading to the end checks the entry's CRC before the rename.
            with atomic_path(dest) as tmp, open(tmp, "wb") as out, zf.open(member) as src:
                shutil.copyfileobj(src, out, _CHUNK)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
            # RuntimeError: encrypted entry; NotImplementedError: unknown compression.
            raise DownloadError(
                f"{archive}: entry {member!r} is corrupt ({e}); delete the archive and download again"
            ) from None
    return dest
