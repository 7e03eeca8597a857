"""Exception types.

Every error a user can cause (a bad path, a broken download, a foreign
caffemodel, an unknown CLI key) derives from :class:`FaceSegmentationError`, so
the command line can print it as one line instead of a traceback. The command
line's exit status follows the kind: :class:`ConfigError` (a mistake in the
command) exits 2, any other :class:`WeightsError` (the weights could not be
obtained or verified) exits 3; see :data:`EXIT_STATUSES`.
"""

import os
import sys
from collections.abc import Callable, Sequence

#: The commands' exit statuses, as ``--help`` and the README list them.
EXIT_STATUSES = {
    0: "every image was written",
    1: "some images failed (listed at the end and in the failure CSV); the rest were written",
    2: "a mistake in the command: one 'error:' line says what to change",
    3: "the weights could not be obtained or verified (download failed, HTTP error, hash "
    "mismatch, a corrupt or foreign weights file); fix the source or try again later",
    130: "interrupted (Ctrl-C); run the same command again to resume",
}


class FaceSegmentationError(Exception):
    """Base class for errors caused by input or environment, not by a bug."""


class CaffeModelError(FaceSegmentationError, ValueError):
    """A caffemodel file is truncated, corrupt or not of this network."""


class WeightsError(FaceSegmentationError):
    """Weights are missing, of the wrong shape, or fail verification."""


class DownloadError(WeightsError):
    """A download failed (network, HTTP status, size, hash or archive)."""


class ImageReadError(FaceSegmentationError):
    """An input file is not a readable image."""


class ConfigError(FaceSegmentationError):
    """A command line key or value is invalid."""


class WeightsSettingError(WeightsError, ConfigError):
    """The weights were asked for in a way that cannot work: an unknown
    ``WEIGHTS`` name, a file where the weights folder belongs, a folder that
    cannot be written. A mistake in the command, not a failed download."""


def exit_status(e: FaceSegmentationError) -> int:
    """The exit status for a user-caused error: 3 when the weights could not be
    obtained or verified, 2 for everything else (a mistake in the command)."""
    if isinstance(e, WeightsError) and not isinstance(e, ConfigError):
        return 3
    return 2


def run_command(argv: Sequence[str], help_text: Callable[[], str], body: Callable[[], int], interrupted: str) -> int:
    """What every command's ``main`` does around its work.

    ``--help`` (or ``-h``, ``help``) prints ``help_text()``; a
    :class:`FaceSegmentationError` becomes one ``error:`` line and its
    :func:`exit_status`; Ctrl-C before the work handles it prints
    ``interrupted`` and exits 130; a closed pipe (``--help | head``) ends quietly.
    """
    try:
        if any(a in ("-h", "--help", "help") for a in argv):
            print(help_text())
            return 0
        try:
            return body()
        except FaceSegmentationError as e:
            print(f"error: {e}", file=sys.stderr)
            return exit_status(e)
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            return 130
    except BrokenPipeError:
        # Python would print a traceback when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
