"""Where the video command's frames come from: a video file, an image sequence or a camera.

- Files are decoded with PyAV (FFmpeg's libraries): every frame with its own
  timestamp (variable frame rates survive), the display rotation phones record
  applied as players apply it, and the number of frames the file really holds.
- Image sequences (``'frames/*.png'``) are read with OpenCV in natural order
  (``2.png`` before ``10.png``, as FFmpeg's ``%d.png`` numbers them); each frame
  keeps its place in the sequence and its file's name, so an unreadable file
  leaves a gap instead of shifting the frames after it.
- Cameras are OpenCV's ``VideoCapture``; a frame's time is when it was read.

Every source gives :class:`SourceFrame` objects: the BGR picture, its
timestamp (``pts`` in ``time_base`` units, as FFmpeg counts) and its name (the
mask's file name without ``.png``).
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .video_av import VideoError, av_error, require_av

__all__ = [
    "SourceFrame",
    "VideoSource",
    "FileSource",
    "ImageSequence",
    "CameraSource",
    "open_source",
    "natural_key",
    "rate_time_base",
    "DEFAULT_FPS",
]

#: Frame rate of image sequences (and of sources that report none) unless ``FPS`` says otherwise.
DEFAULT_FPS = 25.0
#: A reported frame rate outside (0, this] is taken as "unknown" (some streams report 0 or 90000).
_MAX_PLAUSIBLE_FPS = 1000.0
_GLOB_CHARS = set("*?[")
#: Frames up to this many pixels (1080p) are decoded in one thread.
_ONE_THREAD_PIXELS = 1920 * 1088
#: Cameras: timestamps in milliseconds from the first frame.
_CAMERA_TIME_BASE = Fraction(1, 1000)


@dataclass
class SourceFrame:
    """One frame as read.

    Attributes:
        bgr: ``(H, W, 3)`` uint8 picture, OpenCV's channel order, upright.
        pts: Presentation time in ``time_base`` units.
        time_base: Seconds per ``pts`` unit.
        name: The frame's name: the image's stem in a sequence, the zero-padded
            frame index (``000012``) in a video or from a camera.
        duration: How long it is shown, in ``time_base`` units, when known.
    """

    bgr: np.ndarray = field(repr=False)
    pts: int
    time_base: Fraction
    name: str
    duration: int | None = None

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


def natural_key(path: str | os.PathLike) -> tuple:
    """Sort key that orders runs of digits by value: ``2.png`` before ``10.png``.

    Text parts compare without case; the plain text breaks ties, so the order is total.
    """
    text = os.fspath(path)
    parts = re.split(r"(\d+)", text)
    # re.split with a group alternates text, digits, text...: same types at the same positions.
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), text


def rate_time_base(fps: float) -> Fraction:
    """``1 / fps`` as an exact fraction (29.97 -> 100/2997)."""
    return 1 / Fraction(fps).limit_denominator(100000)


def _plausible(fps) -> float | None:
    try:
        fps = float(fps or 0.0)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return fps if 0.0 < fps <= _MAX_PLAUSIBLE_FPS else None


def _cv2():
    import cv2

    return cv2


class VideoSource:
    """Frames from a video file, an image sequence or a camera; made by :func:`open_source`,
    which has already read the first frame (a source that opens but yields nothing
    is refused there, not half-way).

    Attributes:
        spec: What was asked for (a path, a pattern, a camera index).
        kind: ``"file"``, ``"images"`` or ``"camera"``.
        width, height: Frame size in pixels, upright (the first frame's).
        fps: The source's frame rate (a file's average), or ``None`` when unknown.
        frame_count: Frames in a file (as its index counts them) or sequence, ``None`` for a camera.
        time_base: Seconds per ``pts`` unit of the frames.
        skipped: Frames left out, each ``(path, reason)``: unreadable images,
            damaged packets, a file that ends early.
        paths: The files the frames come from (a file source: one).
    """

    kind = "source"

    def __init__(self, spec) -> None:
        self.spec = spec
        self.width = self.height = 0
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.time_base: Fraction = rate_time_base(DEFAULT_FPS)
        self.skipped: list[tuple[Path, str]] = []
        self.paths: list[Path] = []
        self._first: SourceFrame | None = None

    # Subclasses: the next frame, or None at the end.
    def _next(self) -> SourceFrame | None:
        raise NotImplementedError

    def read_frame(self) -> SourceFrame | None:
        """The next :class:`SourceFrame`, or ``None`` at the end."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._next()

    def read(self) -> np.ndarray | None:
        """The next ``(H, W, 3)`` uint8 BGR frame, or ``None`` at the end."""
        frame = self.read_frame()
        return None if frame is None else frame.bgr

    def _start(self) -> None:
        """Read the first frame now (size, and a refusal of sources that yield nothing)."""
        frame = self._next()
        if frame is None:
            self.close()
            raise VideoError(self._nothing())
        self._first = frame
        self.height, self.width = (int(v) for v in frame.bgr.shape[:2])

    def _nothing(self) -> str:
        return f"SOURCE={self.spec}: no frame could be read"

    def close(self) -> None:
        """Release the file or camera."""

    def notes(self) -> list[str]:
        """What a summary should say about how frames were read (rotation applied...)."""
        return []

    def describe(self) -> str:
        """``640x480, 30.00 fps, 300 frames`` (what is known)."""
        parts = [f"{self.width}x{self.height}"]
        parts.append(f"{self.fps:.2f} fps" if self.fps else "frame rate unknown")
        if self.frame_count:
            parts.append(f"{self.frame_count} frames")
        return ", ".join(parts + self.notes())

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:  # a grey source
        return _cv2().cvtColor(frame, _cv2().COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return _cv2().cvtColor(frame, _cv2().COLOR_BGRA2BGR)
    return frame


# --------------------------------------------------------------------------
# Files (PyAV).


def _rotate(bgr: np.ndarray, degrees: int) -> np.ndarray:
    """Turn a frame as a player shows it: ``degrees`` counter-clockwise (FFmpeg's
    display-matrix angle), to the nearest quarter turn."""
    k = round(degrees / 90) % 4
    if k == 0:
        return bgr
    cv2 = _cv2()
    code = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}[k]
    return cv2.rotate(bgr, code)


def _count_packets(path: Path, index: int) -> int | None:
    """Frames of stream ``index``, counted from its packets (no decoding): for
    containers whose header does not say (Matroska, WebM)."""
    av = require_av(f"SOURCE={path}")
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            stream = c.streams[index]
            return sum(1 for p in c.demux(stream) if p.size)
    except (av.error.FFmpegError, OSError):
        return None


class FileSource(VideoSource):
    """A video file decoded with PyAV (see the module's text)."""

    kind = "file"

    def __init__(self, path: Path, fps: float | None = None) -> None:
        super().__init__(path)
        av = require_av(f"SOURCE={path}")
        self._av = av
        self.path = path
        self.paths = [path]
        try:
            self._container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise VideoError(
                f"SOURCE={path}: not a video FFmpeg can read ({av_error(e)}); check the file, or convert it "
                "(e.g. ffmpeg -i it out.mp4)"
            ) from None
        except OSError as e:
            raise VideoError(f"SOURCE={path}: cannot read it ({e.strerror or e})") from None
        attached = av.stream.Disposition.attached_pic
        streams = [s for s in self._container.streams.video if not (s.disposition & attached)]
        if not streams:
            self._container.close()
            raise VideoError(f"SOURCE={path}: has no video stream (only sound or data); give a video file")
        self.stream = s = streams[0]
        if (s.codec_context.width or 0) * (s.codec_context.height or 0) <= _ONE_THREAD_PIXELS:
            s.thread_count = 1  # up to 1080p one thread keeps up with the network, with less overhead
        else:
            s.thread_type = "AUTO"  # 4K from a phone: FFmpeg's frame and slice threads
        self.fps = _plausible(s.average_rate) or _plausible(s.guessed_rate)
        self.frame_count = s.frames or _count_packets(path, s.index) or None
        #: Sound streams of the file (copied into OUT by the writer).
        self.audio_streams = list(self._container.streams.audio)
        self._retime = rate_time_base(fps) if fps else None
        self.time_base = self._retime or s.time_base or rate_time_base(self.fps or DEFAULT_FPS)
        self._packets = self._container.demux(s)
        self._pending: deque = deque()
        self._ended = False
        self._index = 0
        self._last_pts: int | None = None
        self.rotation = 0
        self.stored_size: tuple[int, int] | None = None
        self.resized = 0
        self._start()

    def _nothing(self) -> str:
        return f"SOURCE={self.path}: no frame could be decoded; is it a video (and not empty or truncated)?"

    def _decode(self, packet) -> None:
        try:
            self._pending.extend(self.stream.decode(packet))
        except self._av.error.EOFError:
            self._ended = True
        except self._av.error.FFmpegError as e:
            when = (
                f" at {float(packet.pts * packet.time_base):.2f} s"
                if packet is not None and packet.pts is not None
                else ""
            )
            self.skipped.append((self.path, f"a damaged packet{when} could not be decoded ({av_error(e)})"))

    def _fill(self) -> None:
        while not self._pending and not self._ended:
            try:
                packet = next(self._packets)
            except StopIteration:
                self._decode(None)  # the frames the decoder still holds
                self._ended = True
                self._check_length()
                return
            except self._av.error.FFmpegError as e:
                self.skipped.append((self.path, f"reading stopped after {self._index} frames ({av_error(e)})"))
                self._decode(None)
                self._ended = True
                return
            self._decode(packet)

    def _declared_s(self) -> float | None:
        """The video stream's own length as its header states it (Matroska: the DURATION tag)."""
        s = self.stream
        if s.duration and s.time_base:
            return float(s.duration * s.time_base)
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", s.metadata.get("DURATION", "").strip())
        return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None

    def _check_length(self) -> None:
        # A file cut short (a broken download) ends without an error in some containers:
        # say so when its frames stop well before the length its header states.
        declared = self._declared_s()
        if declared is None or self._last_pts is None or self._retime is not None:
            return
        start = float((self.stream.start_time or 0) * self.time_base)
        reached = float(self._last_pts * self.time_base) - start
        # Beyond three frames and 2 %: headers count the last frame's duration, edit lists shift a little.
        if declared - reached > max(3 / (self.fps or DEFAULT_FPS), 0.02 * declared):
            self.skipped.append(
                (
                    self.path,
                    f"the file ends at {reached:.1f} s but its header says {declared:.1f} s: cut short? "
                    f"(the {self._index} frames there were processed)",
                )
            )

    def _next(self) -> SourceFrame | None:
        self._fill()
        if not self._pending:
            return None
        frame = self._pending.popleft()
        # Colours as the stream tags them (BT.709, full range...), as players convert them.
        kwargs = {"src_color_range": frame.color_range} if frame.color_range in (1, 2) else {}
        bgr = frame.to_ndarray(format="bgr24", **kwargs)
        rotation = int(getattr(frame, "rotation", 0) or 0)  # the display matrix's angle (PyAV reads it per frame)
        if self.stored_size is None:
            self.stored_size = (frame.width, frame.height)
            self.rotation = rotation
        bgr = _rotate(bgr, rotation)
        if self.width and (bgr.shape[1], bgr.shape[0]) != (self.width, self.height):
            # A stream that changes size mid-way: the output keeps the first size.
            bgr = _cv2().resize(bgr, (self.width, self.height), interpolation=_cv2().INTER_AREA)
            self.resized += 1
        if self._retime is not None:
            pts, duration = self._index, 1
        else:
            pts = frame.pts
            if pts is None:
                step = round(1 / (self.fps or DEFAULT_FPS) / self.time_base)
                pts = 0 if self._last_pts is None else self._last_pts + max(1, step)
            duration = int(frame.duration) if getattr(frame, "duration", None) else None
        self._last_pts = pts
        name = f"{self._index:06d}"
        self._index += 1
        return SourceFrame(bgr, int(pts), self.time_base, name, duration)

    def notes(self) -> list[str]:
        notes = []
        if self.rotation and self.stored_size:
            w, h = self.stored_size
            notes.append(f"stored {w}x{h}, turned {self.rotation} degrees as players show it")
        if self.audio_streams:
            codecs = ", ".join(s.codec_context.name for s in self.audio_streams)
            notes.append(f"sound: {codecs}")
        return notes

    def close(self) -> None:
        c, self._container = getattr(self, "_container", None), None
        if c is not None:
            c.close()


# --------------------------------------------------------------------------
# Image sequences (OpenCV).


class ImageSequence(VideoSource):
    """Image files in natural order, each a frame at ``index / fps`` seconds."""

    kind = "images"

    def __init__(self, pattern: str, paths: list[Path], fps: float | None = None) -> None:
        super().__init__(pattern)
        self.paths = sorted(paths, key=natural_key)
        self.fps = float(fps or DEFAULT_FPS)
        self.time_base = rate_time_base(self.fps)
        self.frame_count = len(self.paths)
        self._next_index = 0
        self._start()

    def _nothing(self) -> str:
        return f"SOURCE={self.spec}: none of the {len(self.paths)} matching files is an image OpenCV can read"

    def _next(self) -> SourceFrame | None:
        cv2 = _cv2()
        while self._next_index < len(self.paths):
            i = self._next_index
            path = self.paths[i]
            self._next_index += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.skipped.append((path, "not an image OpenCV can read"))
                continue
            if self.width and (frame.shape[1], frame.shape[0]) != (self.width, self.height):
                self.skipped.append(
                    (path, f"{frame.shape[1]}x{frame.shape[0]}, not the sequence's {self.width}x{self.height}")
                )
                continue
            # Its place in the sequence is its time: a skipped file leaves a gap, it shifts nothing.
            return SourceFrame(_bgr(frame), i, self.time_base, path.stem, 1)
        return None

    def mask_names(self) -> list[str]:
        """The mask name of every file of the sequence (its stem), in order."""
        return [p.stem for p in self.paths]


# --------------------------------------------------------------------------
# Cameras (OpenCV).


class CameraSource(VideoSource):
    """A camera through OpenCV; frames are timed by when they were read (or at ``fps``)."""

    kind = "camera"

    def __init__(self, index: int, fps: float | None = None, wait_s: float = 2.0) -> None:
        super().__init__(index)
        cv2 = _cv2()
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise VideoError(
                f"SOURCE={index}: cannot open camera {index}; check that a camera is connected, that no "
                "other program is using it and that you may use it, or give a video file instead"
            )
        self._cap = cap
        self.fps = _plausible(cap.get(cv2.CAP_PROP_FPS))
        self._fixed = rate_time_base(fps) if fps else None
        self.time_base = self._fixed or _CAMERA_TIME_BASE
        self._t0: float | None = None
        self._index = 0
        self._last = -1
        deadline = time.monotonic() + wait_s
        frame = self._grab()
        while frame is None and time.monotonic() < deadline:  # cameras may need a moment
            time.sleep(0.05)
            frame = self._grab()
        if frame is None:
            self.close()
            raise VideoError(
                f"SOURCE={index}: camera {index} opened but gave no frame; is it in use by another program?"
            )
        self._first = self._frame(frame)
        self.height, self.width = (int(v) for v in frame.shape[:2])

    def _grab(self) -> np.ndarray | None:
        ok, frame = self._cap.read() if self._cap is not None else (False, None)
        return _bgr(frame) if ok and frame is not None else None

    def _frame(self, bgr: np.ndarray) -> SourceFrame:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        if self._fixed is not None:
            pts = self._index
        else:
            pts = max(self._last + 1, round((now - self._t0) / self.time_base))
        self._last = pts
        name = f"{self._index:06d}"
        self._index += 1
        return SourceFrame(bgr, int(pts), self.time_base, name)

    def _next(self) -> SourceFrame | None:
        bgr = self._grab()
        return None if bgr is None else self._frame(bgr)

    def close(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()


# --------------------------------------------------------------------------


def _camera_index(spec) -> int | None:
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return spec
    text = str(spec).strip()
    if text.isdigit() and not Path(text).exists():
        return int(text)
    return None


def open_source(spec: str | os.PathLike | int, *, fps: float | None = None, camera_wait_s: float = 2.0) -> VideoSource:
    """Open a video file, an image-sequence glob or a camera, and read its first frame.

    Args:
        spec: A video file (anything FFmpeg reads), a glob pattern of images
            (``'frames/*.png'``, in natural order), or a camera index (``0``,
            or the text ``"0"`` when no file has that name).
        fps: Time the frames at this constant rate instead of the source's own
            timestamps (image sequences: :data:`DEFAULT_FPS` when ``None``).
        camera_wait_s: How long a camera may take to deliver its first frame.

    Returns:
        A :class:`VideoSource` positioned at its first frame.

    Raises:
        VideoError: Nothing there, not a video, a camera that does not open,
            no frame at all, or PyAV missing for a file; the message says which
            and what to do.
    """
    index = _camera_index(spec)
    if index is not None:
        return CameraSource(index, fps, camera_wait_s)
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if _GLOB_CHARS & set(text) and not path.exists():
        paths = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if os.path.isfile(p)]
        if not paths:
            raise VideoError(f"SOURCE={text}: the pattern matches no files")
        return ImageSequence(text, paths, fps)
    if path.is_dir():
        raise VideoError(
            f"SOURCE={path}: is a folder; give a video file, a glob pattern of images such as "
            f"'{path / '*.png'}', or a camera index such as 0"
        )
    if not path.exists():
        raise VideoError(f"SOURCE={path}: no such file; give a video file, a glob pattern of images or a camera index")
    return FileSource(path, fps)
