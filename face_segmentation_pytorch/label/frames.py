"""The frames of a labelling project's source, by index: a video (PyAV) or an image sequence.

Frame ``i`` is the ``i``-th frame the video command decodes (presentation
order), as it shows it (the display rotation phones record applied, colours
converted with the range the stream declares), or the ``i``-th file of an
image sequence in natural order (``2.png`` before ``10.png``), so the masks
``python -m face_segmentation_pytorch.video MASKS_DIR=...`` writes
(``000000.png``, ``000001.png``... for a video; the files' own names for an
image sequence) line up with the labels.

A video is indexed once by demuxing (packet timestamps, no decoding); a frame
is then found by seeking to the keyframe before it and decoding forward, and
consecutive frames continue the same decoder. When timestamps are missing or
repeat, frames are found by decoding from the start instead (slow, correct).
"""

from __future__ import annotations

import glob as _glob
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["IMAGE_SUFFIXES", "FrameError", "FrameSource", "ImageFrames", "VideoFrames", "natural_key", "open_frames"]

#: Files an image-sequence folder is made of.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def natural_key(path: str | os.PathLike) -> tuple:
    """Runs of digits compare by value (``2.png`` before ``10.png``), text without case; the plain
    text breaks ties. The video command orders image sequences the same way."""
    text = os.fspath(path)
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), text


def _to_rgb(frame) -> np.ndarray:
    """A decoded PyAV frame as players show it: the stream's colour range, the display rotation."""
    kwargs = {"src_color_range": frame.color_range} if frame.color_range in (1, 2) else {}
    rgb = frame.to_ndarray(format="rgb24", **kwargs)
    quarter_turns = round(int(frame.rotation or 0) / 90) % 4  # counter-clockwise, as FFmpeg states it
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


class FrameError(Exception):
    """A frame of a readable source could not be decoded (a damaged file)."""


class FrameSource:
    """Frames by index. Subclasses set :attr:`count`, :attr:`kind` and :attr:`path`.

    Attributes:
        count: Number of frames.
        kind: ``"video"`` or ``"images"``.
        path: The source as the user gave it, absolute (a file, folder or glob).
    """

    count: int
    kind: str
    path: str

    def __init__(self, cache: int = 16) -> None:
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache
        self._lock = threading.Lock()

    def get(self, i: int) -> np.ndarray:
        """Frame ``i`` as an ``(H, W, 3)`` uint8 RGB array (a shared copy: do not modify).

        Raises:
            IndexError: ``i`` is not in ``0..count-1``.
            FrameError: The frame cannot be decoded.
        """
        if not 0 <= i < self.count:
            raise IndexError(f"no frame {i}; the source has {self.count} frames (0..{self.count - 1})")
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
            frame = self._read(i)
            frame.setflags(write=False)
            self._cache[i] = frame
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return frame

    def frames(self, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """``(i, frame)`` for ascending ``indices`` (reads forward: the cheap order for a video)."""
        for i in sorted(set(indices)):
            yield i, self.get(i)

    def video_source_argument(self) -> str:
        """What the video command's ``SOURCE`` key needs for this source."""
        return self.path

    def _read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (a no-op for image sequences)."""


class ImageFrames(FrameSource):
    """Image files in natural order (a folder's images, or a glob pattern's matches)."""

    kind = "images"

    def __init__(self, files: list[Path], path: str, pattern: str) -> None:
        super().__init__()
        self.files = files
        self.count = len(files)
        self.path = path
        self._pattern = pattern

    def _read(self, i: int) -> np.ndarray:
        import face_segmentation_pytorch as fsp

        try:
            return np.asarray(fsp.load_image(self.files[i]))
        except fsp.ImageReadError as e:
            raise FrameError(str(e)) from None

    def video_source_argument(self) -> str:
        return self._pattern


class VideoFrames(FrameSource):
    """A video file's frames through PyAV (FFmpeg's own libraries)."""

    kind = "video"

    def __init__(self, path: str) -> None:
        super().__init__()
        try:
            import av
        except ImportError:
            raise ConfigError(
                f"SOURCE={path}: reading a video needs PyAV: pip install 'face_segmentation_pytorch[video]' "
                "(or give a folder of images)"
            ) from None

        self.path = path
        try:
            self._container = av.open(path)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"SOURCE={path}: not a video FFmpeg can read ({_first_line(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise ConfigError(f"SOURCE={path}: the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        pts: list[int] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size:  # the flush packet at the end has no data
                    pts.append(packet.pts)
        except av.error.FFmpegError as e:
            self._container.close()
            raise ConfigError(f"SOURCE={path}: cannot be read to its end ({_first_line(e)})") from None
        self.count = len(pts)
        if not self.count:
            self._container.close()
            raise ConfigError(f"SOURCE={path}: the video has no frames")
        # Seeking needs every frame's own timestamp; without them, decode from the start.
        self._seekable = None not in pts and len(set(pts)) == len(pts)
        self._pts = sorted(pts) if self._seekable else []
        self._decoder: Iterator | None = None
        self._next = -1  # the index the decoder yields next

    def _restart(self, target_pts: int | None) -> None:
        if target_pts is None:
            self._container.seek(0, backward=True, any_frame=False, stream=self._stream)
        else:
            self._container.seek(target_pts, backward=True, any_frame=False, stream=self._stream)
        self._decoder = self._container.decode(self._stream)

    def _read(self, i: int) -> np.ndarray:
        import av

        try:
            if self._seekable:
                return self._read_by_pts(i)
            return self._read_by_count(i)
        except (av.error.FFmpegError, StopIteration) as e:
            self._decoder, self._next = None, -1
            raise FrameError(f"frame {i} of {self.path} cannot be decoded ({_first_line(e) or 'the file ends early'})")

    def _read_by_pts(self, i: int) -> np.ndarray:
        target = self._pts[i]
        if self._decoder is None or self._next != i:
            self._restart(target)
        for attempt in range(2):
            for frame in self._decoder:
                if frame.pts is None or frame.pts < target:
                    continue
                if frame.pts == target:
                    self._next = i + 1
                    return _to_rgb(frame)
                break  # the seek landed after the frame: decode from the start
            if attempt == 0:
                self._restart(None)
        raise StopIteration

    def _read_by_count(self, i: int) -> np.ndarray:
        if self._decoder is None or self._next > i or self._next < 0:
            self._restart(None)
            self._next = 0
        for frame in self._decoder:
            k = self._next
            self._next += 1
            if k == i:
                return _to_rgb(frame)
        raise StopIteration

    def close(self) -> None:
        self._container.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_frames(source: str) -> FrameSource:
    """The frames of ``source``: a video file, a folder of images, or a glob pattern of images.

    Raises:
        ConfigError: Nothing there, no frames, or not a readable video (one line naming ``SOURCE``).
    """
    text = os.path.expanduser(str(source))
    if any(c in text for c in "*?["):
        pattern = os.path.abspath(text)
        files = sorted((Path(p) for p in _glob.glob(pattern) if Path(p).is_file()), key=natural_key)
        if not files:
            raise ConfigError(f"SOURCE={source}: the pattern matches no files")
        return ImageFrames(files, pattern, pattern)
    path = Path(text).absolute()
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key
        )
        if not files:
            raise ConfigError(
                f"SOURCE={source}: no images in the folder ({', '.join(IMAGE_SUFFIXES)}); give a video or a glob"
            )
        suffixes = {p.suffix for p in files}
        if len(suffixes) > 1:
            # The video command takes a glob: one pattern must name exactly these files.
            raise ConfigError(
                f"SOURCE={source}: the folder mixes {', '.join(sorted(suffixes))} images; give a glob such as "
                f"SOURCE='{path}/*{min(suffixes)}'"
            )
        return ImageFrames(files, str(path), str(path / f"*{files[0].suffix}"))
    if not path.exists():
        raise ConfigError(f"SOURCE={source}: no such file or folder")
    return VideoFrames(str(path))
