"""Face segmentation on video: frames in, per-frame results out, as a generator.

Frames are read (:mod:`.video_source`: PyAV for files, OpenCV for image
sequences and cameras) and prepared for the network in a reader thread, and
drawn and written (:mod:`.video_writer`: PyAV; :mod:`.video_masks`: PNG masks)
in writer threads, each behind a bounded queue: the network in the calling
thread never waits for the disk or the codecs, and memory stays bounded when a
camera or a writer is faster than the network.

- :func:`segment_video`: the Python API, a generator of :class:`VideoFrame`.
- :func:`open_source`: a video file, an image-sequence glob or a camera index.
- :class:`VideoSink`, :class:`MaskSink`: the writers the command uses.
- :func:`render_frame`: the three styles (``overlay``, ``fade``, ``cutout``).

Temporal smoothing (:class:`Smoother`) is an exponential moving average of the
probability map, ``ema_t = (1 - s) * p_t + s * ema_{t-1}`` (``ema_0 = p_0``),
with ``s`` the weight the past keeps; masks are then made from ``ema_t`` exactly
as :class:`~.segmenter.FaceSegmenter` makes them from ``p_t``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .postprocess import apply_steps
from .postprocess import dilate as grow_mask
from .postprocess import feather as feather_mask
from .video_av import VideoError
from .video_masks import MaskSink
from .video_render import FADE_KEEP, STYLES, render_frame, shown_map
from .video_source import (
    DEFAULT_FPS,
    SourceFrame,
    VideoSource,
    natural_key,
    open_source,
)
from .video_worker import wait_for
from .video_writer import OUTPUT_TYPES, VideoSink, partial_path, plan_encoding, probe

__all__ = [
    "VideoError",
    "VideoFrame",
    "VideoSource",
    "SourceFrame",
    "open_source",
    "natural_key",
    "segment_video",
    "Smoother",
    "render_frame",
    "shown_map",
    "VideoSink",
    "MaskSink",
    "plan_encoding",
    "probe",
    "partial_path",
    "STYLES",
    "FADE_KEEP",
    "OUTPUT_TYPES",
    "DEFAULT_FPS",
]

_END = object()


def _cv2():
    import cv2

    return cv2


# --------------------------------------------------------------------------
# Smoothing.


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


# --------------------------------------------------------------------------
# The generator.


@dataclass
class VideoFrame:
    """One frame's result.

    Attributes:
        index: Frame number from 0, in reading order (frames a resumed run
            skips are counted too).
        bgr: The decoded frame, upright, in OpenCV's BGR order (uint8).
        pmap: Face probability at the frame's size (smoothed when smoothing is on).
        mask: Boolean mask (from the smoothed map when smoothing is on), or
            ``None`` without a threshold.
        alpha: With feathering, the mask's soft edge in ``[0, 1]``.
        raw_pmap: This frame's own map before smoothing (``pmap`` itself when off).
        segmentation: :class:`~.segmenter.Segmentation` of this frame alone,
            exactly as :meth:`FaceSegmenter.run` gives it.
        network_s: Seconds the network (and its resizing) took for this frame.
        name: The frame's name: the image's stem in a sequence, the frame
            index (``000012``) in a video; masks are written under it.
        pts, time_base: Its presentation time, ``pts * time_base`` seconds, as
            the source has it (the output keeps it).
        duration: How long it is shown, in ``time_base`` units, when known.
    """

    index: int
    bgr: np.ndarray = field(repr=False)
    pmap: np.ndarray = field(repr=False)
    mask: np.ndarray | None = field(repr=False)
    alpha: np.ndarray | None = field(repr=False)
    raw_pmap: np.ndarray = field(repr=False)
    segmentation: object = field(repr=False)
    network_s: float = 0.0
    name: str = ""
    pts: int = 0
    time_base: Fraction = Fraction(1, 25)
    duration: int | None = None

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)

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


def _reader(
    source: VideoSource,
    segmenter,
    out: queue.Queue,
    stop: threading.Event,
    max_frames: int | None,
    skip: Callable[[str], bool] | None,
) -> None:
    # Decoding, BGR -> RGB and the network's input preparation, beside the network.
    cv2 = _cv2()
    try:
        i = 0
        while not stop.is_set() and (max_frames is None or i < max_frames):
            frame = source.read_frame()
            if frame is None:
                break
            index, i = i, i + 1
            if skip is not None and skip(frame.name):
                continue
            rgb = cv2.cvtColor(frame.bgr, cv2.COLOR_BGR2RGB)
            if not _put(out, (index, frame, segmenter.prepare(rgb)), stop):
                return
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
    skip: Callable[[str], bool] | None = None,
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
            print(frame.index, frame.time, frame.mask.mean())

    Args:
        source: A :class:`VideoSource`, or what :func:`open_source` takes: a
            video file, an image-sequence glob or a camera index.
        segmenter: A :class:`~.segmenter.FaceSegmenter`, a weights name, or
            ``None`` for ``"linknet34_oneflow"`` (the real-time network).
        smooth: Weight ``s`` of the past in the moving average of the
            probability map (:class:`Smoother`); 0 is off.
        max_frames: Stop after this many frames read (``None``: all).
        queue_size: Frames decoded ahead of the network.
        skip: Called with each frame's name; frames it is true for are read
            but neither segmented nor yielded (a run resuming its masks). With
            smoothing, they are left out of the average.
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
        target=_reader, args=(src, segmenter, frames, stop, max_frames, skip), name="fsp-video-read", daemon=True
    )
    reader.start()

    def got(timeout: float) -> bool:
        try:
            box.append(frames.get(timeout=timeout))
            return True
        except queue.Empty:
            return False

    box: list = []
    try:
        while True:
            wait_for(got)  # timed waits: a Ctrl-C is taken within a tick (video_worker.wait_for)
            item = box.pop()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            i, source_frame, prepared = item
            start = time.perf_counter()
            (seg,) = segmenter.run([prepared])
            elapsed = time.perf_counter() - start
            if smoother is None:
                pmap, mask, alpha = seg.pmap, seg.mask, seg.alpha
            else:
                pmap, mask, alpha = smoother(seg.pmap)
            f: SourceFrame = source_frame
            yield VideoFrame(
                i, f.bgr, pmap, mask, alpha, seg.pmap, seg, elapsed, f.name, f.pts, f.time_base, f.duration
            )
    finally:
        stop.set()
        while reader.is_alive():  # let a reader blocked on a full queue see the stop
            try:
                frames.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)
        if owned:
            src.close()
