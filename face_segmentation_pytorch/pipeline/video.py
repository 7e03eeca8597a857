"""Face segmentation on video: frames in, per-frame results out, as a generator.

Frames are read (OpenCV ``VideoCapture``, or ``cv2.imread`` for an image
sequence) and prepared for the network in a reader thread, and rendered and
written (OpenCV ``VideoWriter``, PNG masks) in writer threads, each behind a
bounded queue: the network in the calling thread never waits for the disk, and
memory stays bounded when a camera or a writer is faster than the network.

- :func:`segment_video`: the Python API, a generator of :class:`VideoFrame`.
- :func:`open_source`: a video file, an image-sequence glob or a camera index.
- :class:`VideoSink`, :class:`MaskSink`: the writers the command uses; the
  video is written under a temporary name beside ``OUT`` and renamed at the
  end, so an interrupted run leaves a whole, playable file and a failed one
  none.
- :func:`render_frame`: the three styles (``overlay``, ``fade``, ``cutout``).

Temporal smoothing (:class:`Smoother`) is an exponential moving average of the
probability map, ``ema_t = (1 - s) * p_t + s * ema_{t-1}`` (``ema_0 = p_0``),
with ``s`` the weight the past keeps; masks are then made from ``ema_t`` exactly
as :class:`~.segmenter.FaceSegmenter` makes them from ``p_t``.
"""

from __future__ import annotations

import glob
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .postprocess import apply_steps
from .postprocess import dilate as grow_mask
from .postprocess import feather as feather_mask

__all__ = [
    "VideoError",
    "VideoFrame",
    "VideoSource",
    "open_source",
    "segment_video",
    "Smoother",
    "render_frame",
    "shown_map",
    "VideoSink",
    "MaskSink",
    "STYLES",
    "FADE_KEEP",
    "FOURCCS",
    "DEFAULT_FPS",
]

#: Rendering styles of :func:`render_frame`.
STYLES = ("overlay", "fade", "cutout")
#: ``fade``: how much of a background pixel stays, the rest turning white. The
#: OneFlow demo lowers the background's alpha by 180 of 255 and pastes the frame
#: on white, so 75/255 of the frame remains there.
FADE_KEEP = 75.0 / 255.0
#: Output suffix -> the codecs tried, in order (the first OpenCV can open wins).
FOURCCS: dict[str, tuple[str, ...]] = {
    ".mp4": ("mp4v",),
    ".m4v": ("mp4v",),
    ".mov": ("mp4v",),
    ".avi": ("MJPG", "XVID"),
    ".mkv": ("MJPG", "XVID", "mp4v"),
}
#: Frame rate written for sources that report none (image sequences, some cameras).
DEFAULT_FPS = 25.0
#: A source frame rate outside (0, this] is taken as "unknown" (OpenCV reports
#: 0, NaN or 90000 for streams without one).
_MAX_PLAUSIBLE_FPS = 1000.0
_GLOB_CHARS = set("*?[")
_END = object()


class VideoError(ConfigError):
    """A source that cannot be read or an output that cannot be written: a
    mistake in the command (exit status 2), said in one line."""


def _cv2():
    import cv2

    return cv2


# --------------------------------------------------------------------------
# Sources.


class VideoSource:
    """Frames from a video file, an image sequence or a camera (OpenCV BGR).

    Made by :func:`open_source`, which has already read the first frame (so a
    source that opens but yields nothing is refused there, not half-way).

    Attributes:
        spec: What was asked for (a path, a pattern, a camera index).
        kind: ``"file"``, ``"images"`` or ``"camera"``.
        width, height: Frame size in pixels (the first frame's).
        fps: The source's frame rate, or ``None`` when it reports none.
        frame_count: Frames in a file or sequence (OpenCV's estimate for a
            file), ``None`` for a camera.
        skipped: Image-sequence files that could not be read or had another
            size, each with the reason (those frames are left out).
    """

    def __init__(self, spec, kind: str, capture=None, paths: Sequence[Path] | None = None) -> None:
        self.spec = spec
        self.kind = kind
        self._cap = capture
        self._paths = list(paths or [])
        self._next_path = 0
        self._first: np.ndarray | None = None
        self.width = self.height = 0
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.skipped: list[tuple[Path, str]] = []

    def _read_raw(self) -> np.ndarray | None:
        if self._cap is not None:
            ok, frame = self._cap.read()
            return frame if ok and frame is not None else None
        cv2 = _cv2()
        while self._next_path < len(self._paths):
            path = self._paths[self._next_path]
            self._next_path += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.skipped.append((path, "not an image OpenCV can read"))
                continue
            if self.width and (frame.shape[1], frame.shape[0]) != (self.width, self.height):
                self.skipped.append(
                    (path, f"{frame.shape[1]}x{frame.shape[0]}, not the sequence's {self.width}x{self.height}")
                )
                continue
            return frame
        return None

    def read(self) -> np.ndarray | None:
        """The next ``(H, W, 3)`` uint8 BGR frame, or ``None`` at the end."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        frame = self._read_raw()
        if frame is not None and frame.ndim == 2:  # a grey source
            frame = _cv2().cvtColor(frame, _cv2().COLOR_GRAY2BGR)
        return frame

    def close(self) -> None:
        """Release the capture (the camera for other programs)."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        """``640x480, 30.00 fps, 300 frames`` (what is known)."""
        parts = [f"{self.width}x{self.height}"]
        parts.append(f"{self.fps:.2f} fps" if self.fps else "frame rate unknown")
        if self.frame_count:
            parts.append(f"{self.frame_count} frames")
        return ", ".join(parts)

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _camera_index(spec) -> int | None:
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return spec
    text = str(spec).strip()
    if text.isdigit() and not Path(text).exists():
        return int(text)
    return None


def open_source(spec: str | os.PathLike | int, *, camera_wait_s: float = 2.0) -> VideoSource:
    """Open a video file, an image-sequence glob or a camera, and read its first frame.

    Args:
        spec: A video file (anything OpenCV's ``VideoCapture`` reads), a glob
            pattern of images (``'frames/*.png'``, sorted by name), or a camera
            index (``0``, or the text ``"0"`` when no file has that name).
        camera_wait_s: How long a camera may take to deliver its first frame.

    Returns:
        A :class:`VideoSource` positioned at its first frame.

    Raises:
        VideoError: Nothing there, not a video, a camera that does not open,
            or no frame at all; the message says which and what to do.
    """
    cv2 = _cv2()
    _quiet_opencv()
    index = _camera_index(spec)
    if index is not None:
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise VideoError(
                f"SOURCE={index}: cannot open camera {index}; check that a camera is connected, that no "
                "other program is using it and that you may use it, or give a video file instead"
            )
        source = VideoSource(index, "camera", capture=cap)
        deadline = time.monotonic() + camera_wait_s
        frame = source._read_raw()
        while frame is None and time.monotonic() < deadline:  # cameras may need a moment
            time.sleep(0.05)
            frame = source._read_raw()
        if frame is None:
            source.close()
            raise VideoError(f"SOURCE={index}: camera {index} opened but gave no frame; is it in use by another program?")
        source.fps = _plausible_fps(cap.get(cv2.CAP_PROP_FPS))
        return _with_first(source, frame)
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if _GLOB_CHARS & set(text) and not path.exists():
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if os.path.isfile(p))
        if not paths:
            raise VideoError(f"SOURCE={text}: the pattern matches no files")
        source = VideoSource(text, "images", paths=paths)
        frame = source._read_raw()
        if frame is None:
            raise VideoError(f"SOURCE={text}: none of the {len(paths)} matching files is an image OpenCV can read")
        source.frame_count = len(paths) - len(source.skipped)
        return _with_first(source, frame)
    if path.is_dir():
        raise VideoError(
            f"SOURCE={path}: is a folder; give a video file, a glob pattern of images such as "
            f"'{path / '*.png'}', or a camera index such as 0"
        )
    if not path.exists():
        raise VideoError(f"SOURCE={path}: no such file; give a video file, a glob pattern of images or a camera index")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(
            f"SOURCE={path}: not a video OpenCV can read; convert it (e.g. to .mp4 or .avi) or check the file"
        )
    source = VideoSource(path, "file", capture=cap)
    frame = source._read_raw()
    if frame is None:
        source.close()
        raise VideoError(f"SOURCE={path}: no frame could be decoded; is it a video (and not empty or truncated)?")
    source.fps = _plausible_fps(cap.get(cv2.CAP_PROP_FPS))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    source.frame_count = count if count > 0 else None
    return _with_first(source, frame)


def _with_first(source: VideoSource, frame: np.ndarray) -> VideoSource:
    if frame.ndim == 2:
        frame = _cv2().cvtColor(frame, _cv2().COLOR_GRAY2BGR)
    source._first = frame
    source.height, source.width = int(frame.shape[0]), int(frame.shape[1])
    return source


def _plausible_fps(fps: float) -> float | None:
    fps = float(fps or 0.0)
    return fps if 0.0 < fps <= _MAX_PLAUSIBLE_FPS else None


_QUIET = []


def _quiet_opencv() -> None:
    """Keep OpenCV's own warnings (``[ WARN:0@0.1] ... cap.cpp``) off the
    terminal: every failure they describe is reported here in one line."""
    if _QUIET:
        return
    _QUIET.append(True)
    # FFmpeg's own messages ("moov atom not found") bypass OpenCV's logging; its
    # level is read when OpenCV first starts FFmpeg. A level the user set stays.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2 = _cv2()
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging module
        pass


# --------------------------------------------------------------------------
# Smoothing and rendering.


class Smoother:
    """Exponential moving average of probability maps, and the masks from it.

    ``ema_t = (1 - s) * p_t + s * ema_{t-1}``, ``ema_0 = p_0``: each frame's
    map weighs ``1 - s``, the past ``s`` (a flicker of one frame is damped by
    ``1 - s``; a change takes about ``1 / (1 - s)`` frames to settle). The
    mask is then made from ``ema_t`` with the segmenter's threshold,
    post-processing steps, dilation and feathering, as
    :meth:`~.segmenter.FaceSegmenter.run` makes it from ``p_t``.

    Args:
        segmenter: Gives threshold, steps, dilate and feather.
        weight: ``s`` in ``[0, 1)``; 0 passes maps through unchanged.
    """

    def __init__(self, segmenter, weight: float) -> None:
        if not 0.0 <= float(weight) < 1.0:
            raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
        self.segmenter = segmenter
        self.weight = float(weight)
        self._ema: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the past (e.g. after a cut)."""
        self._ema = None

    def __call__(self, pmap: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Return ``(smoothed pmap, mask, alpha)`` for this frame's map."""
        if self._ema is None or self._ema.shape != pmap.shape:
            self._ema = pmap.astype(np.float32, copy=True)
        else:
            s = np.float32(self.weight)
            # (1 - s) * p + s * ema, in place in ema's buffer.
            self._ema *= s
            self._ema += (np.float32(1.0) - s) * pmap
        ema = self._ema.copy()  # the caller's copy; the state keeps changing
        seg = self.segmenter
        if seg.threshold is None:
            return ema, None, None
        mask = apply_steps(ema > seg.threshold, seg.steps)
        if seg.dilate:
            mask = grow_mask(mask, seg.dilate)
        alpha = feather_mask(mask, seg.feather) if seg.feather else None
        return ema, mask, alpha


def shown_map(pmap: np.ndarray, mask: np.ndarray | None, alpha: np.ndarray | None) -> np.ndarray:
    """What a picture shows as the face: the feathered alpha, else the mask,
    else the probability map (the CLI's OVERLAY and CUTOUT rule)."""
    if alpha is not None:
        return alpha
    if mask is not None:
        return mask
    return pmap


def _weight(shown: np.ndarray) -> np.ndarray:
    m = np.asarray(shown)
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    m = m.astype(np.float32, copy=False)
    return np.clip(m, 0.0, 1.0)


def render_frame(
    bgr: np.ndarray,
    shown: np.ndarray,
    style: str = "overlay",
    *,
    color: Sequence[int] = (255, 0, 0),
    background: Sequence[int] = (0, 255, 0),
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw the face on a BGR frame; returns a new ``(H, W, 3)`` uint8 BGR frame.

    With ``m`` the face weight per pixel (``shown``: a boolean mask, or a map
    in ``[0, 1]`` such as a probability or a feathered alpha), in float32 and
    rounded half to even at the end:

    - ``overlay``: ``frame * (1 - a) + color * a`` with ``a = alpha * m``, the
      authors' red blend (:func:`~.render.overlay`, same formula);
    - ``fade``: ``frame * k + 255 * (1 - k)`` with ``k = m + (1 - m) *``
      :data:`FADE_KEEP`: the background fades towards white as in the OneFlow
      demo, the face stays;
    - ``cutout``: ``frame * m + background * (1 - m)``: the face on a colour.

    Args:
        bgr: The frame, OpenCV's BGR order.
        shown: ``(H, W)`` face weight (see :func:`shown_map`).
        style: One of :data:`STYLES`.
        color: ``overlay`` colour, RGB.
        background: ``cutout`` background, RGB.
        alpha: ``overlay`` opacity where the face weight is 1.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    img = np.asarray(bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR frame, got {img.shape} {img.dtype}")
    if np.asarray(shown).shape != img.shape[:2]:
        raise ValueError(f"face map {np.asarray(shown).shape} and frame {img.shape[:2]} differ in size")
    if np.asarray(shown).dtype == np.bool_:
        return _render_mask(img, np.asarray(shown), style, color, background, alpha)
    m = _weight(shown)
    f = img.astype(np.float32)
    if style == "overlay":
        a = (np.float32(alpha) * m)[..., None]
        out = f * (np.float32(1.0) - a) + np.asarray(color[::-1], np.float32) * a
    elif style == "fade":
        keep = (m + (np.float32(1.0) - m) * np.float32(FADE_KEEP))[..., None]
        out = f * keep + np.float32(255.0) * (np.float32(1.0) - keep)
    else:
        w = m[..., None]
        out = f * w + np.asarray(background[::-1], np.float32) * (np.float32(1.0) - w)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _render_mask(img, mask, style, color, background, alpha) -> np.ndarray:
    """:func:`render_frame` for a boolean mask, through per-channel lookup tables.

    With the weight 0 or 1 every output pixel is one of two values per input
    value and channel, so the float32 formula is evaluated once on 0..255 (the
    same operations, so the same rounding) and applied with ``cv2.LUT``: a few
    times faster on a 640x480 frame than the full float pass, which matters
    because the writer thread shares the cores with the network.
    """
    cv2 = _cv2()
    v = np.arange(256, dtype=np.float32)[:, None]  # (256, 1) against (3,) BGR constants
    m8 = mask.view(np.uint8)  # copyTo's mask: non-zero where the face is
    if style == "overlay":
        a = np.float32(alpha) * np.float32(1.0)
        table = v * (np.float32(1.0) - a) + np.asarray(color[::-1], np.float32) * a
        out = img.copy()
        cv2.copyTo(cv2.LUT(img, _lut(table)), m8, out)  # background pixels keep their value
        return out
    if style == "fade":
        keep = np.float32(0.0) + (np.float32(1.0) - np.float32(0.0)) * np.float32(FADE_KEEP)
        out = cv2.LUT(img, _lut(np.broadcast_to(v * keep + np.float32(255.0) * (np.float32(1.0) - keep), (256, 3))))
    else:
        out = np.empty_like(img)
        out[:] = np.asarray(background[::-1], np.uint8)
    cv2.copyTo(img, m8, out)  # the face keeps its pixels
    return out


def _lut(table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.ascontiguousarray(table)), 0, 255).astype(np.uint8).reshape(256, 1, 3)


# --------------------------------------------------------------------------
# The generator.


@dataclass
class VideoFrame:
    """One frame's result.

    Attributes:
        index: Frame number from 0, in reading order.
        bgr: The decoded frame as OpenCV gives it (BGR uint8).
        pmap: Face probability at the frame's size (smoothed when smoothing is on).
        mask: Boolean mask (from the smoothed map when smoothing is on), or
            ``None`` without a threshold.
        alpha: With feathering, the mask's soft edge in ``[0, 1]``.
        raw_pmap: This frame's own map before smoothing (``pmap`` itself when off).
        segmentation: :class:`~.segmenter.Segmentation` of this frame alone,
            exactly as :meth:`FaceSegmenter.run` gives it.
        network_s: Seconds the network (and its resizing) took for this frame.
    """

    index: int
    bgr: np.ndarray = field(repr=False)
    pmap: np.ndarray = field(repr=False)
    mask: np.ndarray | None = field(repr=False)
    alpha: np.ndarray | None = field(repr=False)
    raw_pmap: np.ndarray = field(repr=False)
    segmentation: object = field(repr=False)
    network_s: float = 0.0

    @property
    def rgb(self) -> np.ndarray:
        """The frame in RGB order (the image the network was given)."""
        return self.bgr[:, :, ::-1]

    @property
    def shown(self) -> np.ndarray:
        """The face weight pictures use (:func:`shown_map`)."""
        return shown_map(self.pmap, self.mask, self.alpha)

    def render(self, style: str = "overlay", **kwargs) -> np.ndarray:
        """:func:`render_frame` of this frame (BGR)."""
        return render_frame(self.bgr, self.shown, style, **kwargs)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put without blocking forever: give up when ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _reader(source: VideoSource, segmenter, out: queue.Queue, stop: threading.Event, max_frames: int | None) -> None:
    # Decoding, BGR -> RGB and the network's input preparation, beside the network.
    cv2 = _cv2()
    try:
        i = 0
        while not stop.is_set() and (max_frames is None or i < max_frames):
            bgr = source.read()
            if bgr is None:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if not _put(out, (i, bgr, segmenter.prepare(rgb)), stop):
                return
            i += 1
        _put(out, _END, stop)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
        _put(out, e, stop)


def segment_video(
    source: str | os.PathLike | int | VideoSource,
    segmenter=None,
    *,
    smooth: float = 0.0,
    max_frames: int | None = None,
    queue_size: int = 4,
    **segmenter_kwargs,
) -> Iterator[VideoFrame]:
    """Segment every frame of a video, a camera or an image sequence.

    Frames are decoded and prepared in a reader thread, at most
    ``queue_size`` ahead of the network, which runs in the calling thread, one
    frame at a time (lowest latency for cameras). Stopping the loop early
    (``break``, an exception, Ctrl-C) stops the reader and releases the source.

    Example::

        from face_segmentation_pytorch.pipeline.video import segment_video

        for frame in segment_video("clip.mp4", smooth=0.5, threshold=0.5):
            print(frame.index, frame.mask.mean())

    Args:
        source: A :class:`VideoSource`, or what :func:`open_source` takes: a
            video file, an image-sequence glob or a camera index.
        segmenter: A :class:`~.segmenter.FaceSegmenter`, a weights name, or
            ``None`` for ``"linknet34_oneflow"`` (the real-time network).
        smooth: Weight ``s`` of the past in the moving average of the
            probability map (:class:`Smoother`); 0 is off.
        max_frames: Stop after this many frames (``None``: all).
        queue_size: Frames decoded ahead of the network.
        **segmenter_kwargs: Passed to :class:`FaceSegmenter` when
            ``segmenter`` is a name or ``None`` (``params_dir=``,
            ``threshold=``, ``dilate=``...).

    Yields:
        :class:`VideoFrame`, in order.

    Raises:
        VideoError: The source cannot be opened (see :func:`open_source`).
    """
    from .segmenter import FaceSegmenter

    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    if queue_size < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")
    if segmenter is None or isinstance(segmenter, str):
        segmenter = FaceSegmenter(segmenter or "linknet34_oneflow", **segmenter_kwargs)
    elif segmenter_kwargs:
        raise ValueError("segmenter options apply only when segmenter is a name or None")
    smoother = Smoother(segmenter, smooth) if smooth else None
    src = source if isinstance(source, VideoSource) else open_source(source)
    owned = src is not source
    frames: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader, args=(src, segmenter, frames, stop, max_frames), name="fsp-video-read", daemon=True
    )
    reader.start()
    try:
        while True:
            item = frames.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            i, bgr, prepared = item
            start = time.perf_counter()
            (seg,) = segmenter.run([prepared])
            elapsed = time.perf_counter() - start
            if smoother is None:
                pmap, mask, alpha = seg.pmap, seg.mask, seg.alpha
            else:
                pmap, mask, alpha = smoother(seg.pmap)
            yield VideoFrame(i, bgr, pmap, mask, alpha, seg.pmap, seg, elapsed)
    finally:
        stop.set()
        while reader.is_alive():  # let a reader blocked on a full queue see the stop
            try:
                frames.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)
        if owned:
            src.close()


# --------------------------------------------------------------------------
# Writers.


class _Worker:
    """A thread that applies ``handle`` to queued items in order.

    ``put`` blocks while ``size`` items wait (bounded memory) and raises the
    first error ``handle`` met; ``finish`` drains the queue and waits.
    """

    def __init__(self, handle: Callable, name: str, size: int = 8) -> None:
        self._handle = handle
        self._q: queue.Queue = queue.Queue(maxsize=size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.count = 0

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _END:
                return
            if self._error is not None:
                continue  # drain after a failure; the owner reports it
            try:
                self._handle(item)
                self.count += 1
            except BaseException as e:  # noqa: BLE001 - reported through put/finish
                self._error = e

    def put(self, item) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(item)

    def finish(self) -> None:
        """Write what is queued and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._q.put(_END)
            self._thread.join()
        if self._error is not None:
            raise self._error


def partial_path(out: Path) -> Path:
    """The temporary name a video is written under beside ``out``:
    ``.<stem>.partial<suffix>`` (VideoWriter picks its container from the suffix)."""
    return out.with_name(f".{out.stem}.partial{out.suffix}")


class VideoSink:
    """Write rendered frames to a video file through OpenCV's ``VideoWriter``.

    The file is written as :func:`partial_path` beside ``path`` and renamed
    to ``path`` by :meth:`finish` (also after an interrupt: what was written
    is a whole, playable video); :meth:`abort` removes it. Frames are
    rendered and encoded in a writer thread.

    Args:
        path: The output; its suffix picks the codec (:data:`FOURCCS`).
        size: ``(width, height)`` of every frame.
        fps: Frame rate written in the file.
        codec: A four-character code to use instead of the suffix's choice.
        style, color, background: How frames are drawn (:func:`render_frame`).

    Raises:
        VideoError: Unknown suffix, a folder, or a file OpenCV cannot create.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        size: tuple[int, int],
        fps: float,
        *,
        codec: str | None = None,
        style: str = "overlay",
        color: Sequence[int] = (255, 0, 0),
        background: Sequence[int] = (0, 255, 0),
        queue_size: int = 8,
    ) -> None:
        cv2 = _cv2()
        _quiet_opencv()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if codec is None and suffix not in FOURCCS:
            raise VideoError(
                f"OUT={self.path}: unknown video type {suffix or '(no suffix)'!r}; "
                f"end the name with {', '.join(FOURCCS)} (e.g. result.mp4)"
            )
        if self.path.is_dir():
            raise VideoError(f"OUT={self.path}: is a folder; give a file name such as {self.path / 'result.mp4'}")
        if style not in STYLES:
            raise VideoError(f"STYLE={style!r} is invalid: expected one of {', '.join(STYLES)}")
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.style, self.color, self.background = style, tuple(color), tuple(background)
        self.tmp = partial_path(self.path)
        self._writer = None
        for code in (codec,) if codec else FOURCCS[suffix]:
            if len(code) != 4:
                raise VideoError(f"CODEC={code!r} is invalid: expected a four-character code such as mp4v or MJPG")
            w = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*code), self.fps, self.size)
            if w.isOpened():
                self._writer, self.codec = w, code
                break
            w.release()
        if self._writer is None:
            _remove(self.tmp)
            tried = codec or "/".join(FOURCCS[suffix])
            raise VideoError(
                f"OUT={self.path}: OpenCV cannot write a {tried} video there; check that the folder is "
                "writable, or try another suffix (.avi writes MJPG with OpenCV's own encoder)"
            )
        self._worker = _Worker(self._write, "fsp-video-write", queue_size)
        self.closed = False

    @property
    def count(self) -> int:
        """Frames written so far."""
        return self._worker.count

    def _write(self, item) -> None:
        bgr, shown, rendered = item
        if rendered is None:
            rendered = render_frame(bgr, shown, self.style, color=self.color, background=self.background)
        self._writer.write(rendered)

    def put(self, bgr: np.ndarray, shown: np.ndarray | None = None, rendered: np.ndarray | None = None) -> None:
        """Queue a frame: the decoded frame and its face weight (rendered in the
        writer thread), or an already ``rendered`` BGR frame."""
        self._worker.put((bgr, shown, rendered))

    def finish(self) -> Path | None:
        """Write what is queued, close the file and rename it to ``path``.

        Returns:
            ``path``, or ``None`` when no frame was written (then no file is left).
        """
        if self.closed:
            return self.path if self.path.exists() else None
        try:
            self._worker.finish()
        finally:
            self._writer.release()
            self.closed = True
        if self._worker.count == 0:
            _remove(self.tmp)
            return None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop without keeping the file."""
        if not self.closed:
            try:
                self._worker.finish()
            except BaseException:  # noqa: BLE001 - the file is dropped anyway
                pass
            self._writer.release()
            self.closed = True
        _remove(self.tmp)


class MaskSink:
    """Write one PNG per frame, ``000000.png``, ``000001.png``... (atomically).

    Masks as 0/255, feathered alphas and probability maps as 8-bit grey
    (``round(255 * value)``), as the batch command writes ``__mask.png`` and
    ``__heatmap.png``. Encoding and writing run in a writer thread.
    """

    def __init__(self, folder: str | os.PathLike, queue_size: int = 8) -> None:
        self.folder = Path(folder)
        self._worker = _Worker(self._write, "fsp-mask-write", queue_size)

    @property
    def count(self) -> int:
        return self._worker.count

    @staticmethod
    def to_png_array(pmap: np.ndarray, mask: np.ndarray | None, alpha: np.ndarray | None) -> np.ndarray:
        """The 8-bit picture written for a frame: alpha, else mask, else heatmap."""
        from .render import heatmap_to_png_array

        if alpha is not None:
            return heatmap_to_png_array(alpha, 8)
        if mask is not None:
            return mask.astype(np.uint8) * 255
        return heatmap_to_png_array(pmap, 8)

    def _write(self, item) -> None:
        from .atomic import save_atomic

        index, pmap, mask, alpha = item
        ok, data = _cv2().imencode(".png", self.to_png_array(pmap, mask, alpha))
        if not ok:
            raise OSError(f"cannot encode frame {index} as PNG")
        save_atomic(self.folder / f"{index:06d}.png", lambda f: f.write(data.tobytes()))

    def put(self, index: int, pmap: np.ndarray, mask: np.ndarray | None, alpha: np.ndarray | None) -> None:
        self._worker.put((index, pmap, mask, alpha))

    def finish(self) -> None:
        self._worker.finish()


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
