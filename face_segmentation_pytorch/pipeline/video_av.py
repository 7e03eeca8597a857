"""PyAV, FFmpeg's own libraries, for file video: the import and the errors.

PyAV is in the ``[video]`` extra, not the core: its wheels carry FFmpeg (about
100 MB installed) that the image commands never load, and the video command
needs OpenCV, also an extra, anyway. Where PyAV is missing, the command says in
one line what to install; cameras and ``SHOW`` use OpenCV alone and keep working.
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["VideoError", "INSTALL_HINT", "require_av", "av_error"]

INSTALL_HINT = "pip install 'face_segmentation_pytorch[video]' (or pip install av)"


class VideoError(ConfigError):
    """A source that cannot be read or an output that cannot be written: a
    mistake in the command (exit status 2), said in one line."""


def require_av(what: str):
    """Import PyAV, or say in one line that ``what`` needs it and how to install it.

    Args:
        what: Who needs it, as the user wrote it (``"SOURCE=clip.mp4"``, ``"OUT=faces.mp4"``).

    Returns:
        The ``av`` module.

    Raises:
        VideoError: PyAV is not installed (or does not import).
    """
    try:
        import av
    except ImportError:
        raise VideoError(
            f"{what}: video files are read and written with PyAV (FFmpeg's libraries), which is not installed: "
            f"{INSTALL_HINT}; cameras and SHOW need only OpenCV"
        ) from None
    return av


def av_error(e: BaseException) -> str:
    """FFmpeg's reason in a few words (``Invalid data found when processing input``),
    without PyAV's ``[Errno ...]`` prefix and the call it was in."""
    text = getattr(e, "strerror", None) or str(e)
    return str(text).splitlines()[0].strip() if text else type(e).__name__
