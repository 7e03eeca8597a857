"""Exception types.

Every error a user can cause (a bad path, a broken download, a foreign
caffemodel, an unknown CLI key) derives from :class:`FaceSegmentationError`, so
the command line can print it as one line instead of a traceback.
"""


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
