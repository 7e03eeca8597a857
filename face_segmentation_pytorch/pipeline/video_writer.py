"""Writing the drawn video with PyAV (FFmpeg's own libraries).

- The suffix picks the container and codec (:data:`OUTPUT_TYPES`): ``.mp4`` is
  H.264 in yuv420p with the index at the front (``+faststart``), what every
  browser plays and upload pages take; ``.webm`` is VP9; ``.mkv`` and ``.mov``
  H.264; ``.avi`` MJPEG. ``CODEC`` names another FFmpeg encoder, ``CRF`` the
  quality (:func:`plan_encoding` checks both before any work).
- Every frame keeps its source timestamp, so a variable frame rate survives
  and the sound (:mod:`.video_audio`) stays in step. AVI holds one frame rate
  only: there, times are rounded to it.
- Colours are converted to YUV with the BT.601 matrix, limited range, and the
  stream says so, so players convert them back as they were drawn. OpenCV's
  conversion does it in a quarter of swscale's time (0.5 against 1.9 ms a
  640x480 frame, on the cores the network shares); odd sizes, which it cannot
  take, go through swscale with the same matrix.
- A size the codec cannot take (odd width or height in H.264's 4:2:0) is
  padded by one pixel, repeating the edge, and :attr:`VideoSink.padded` says
  so; VP9 keeps odd sizes as they are.
- The file is written as ``.<name>.partial<suffix>`` beside ``OUT`` and renamed
  at the end by the writer thread itself, after its last frame: an interrupted
  run leaves a whole, playable file, a failed one none, and nothing the main
  thread does while it waits (a second Ctrl-C) cuts the closing short.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .video_audio import SoundTracks
from .video_av import VideoError, av_error, require_av
from .video_pause import pause
from .video_render import STYLES, render_frame
from .video_source import DEFAULT_FPS, rate_time_base
from .video_worker import Worker

__all__ = [
    "OutputType",
    "OUTPUT_TYPES",
    "Encoding",
    "plan_encoding",
    "VideoSink",
    "OutputInfo",
    "probe",
    "partial_path",
]


@dataclass(frozen=True)
class OutputType:
    """What an output suffix stands for.

    Attributes:
        format: FFmpeg's container (muxer) name.
        video: The video encoder used unless ``CODEC`` says otherwise.
        audio: The sound encoder for sound that cannot be copied.
        copy: Sound codecs copied as they are; ``None``: whatever the container takes.
        constant_rate: The container holds one frame rate only (AVI).
        options: Container options (``movflags=+faststart``: the index first, so
            a browser starts playing before the whole file has arrived).
    """

    format: str
    video: str
    audio: str
    copy: frozenset[str] | None = None
    constant_rate: bool = False
    options: dict = field(default_factory=dict)


# Browsers play AAC, MP3, Opus and FLAC in MP4, Opus and Vorbis in WebM.
_MP4 = OutputType(
    "mp4", "libx264", "aac", frozenset({"aac", "mp3", "opus", "flac"}), options={"movflags": "+faststart"}
)
OUTPUT_TYPES: dict[str, OutputType] = {
    ".mp4": _MP4,
    ".m4v": _MP4,
    ".mov": OutputType("mov", "libx264", "aac", options={"movflags": "+faststart"}),
    ".mkv": OutputType("matroska", "libx264", "aac"),
    ".webm": OutputType("webm", "libvpx-vp9", "libopus", frozenset({"opus", "vorbis"})),
    ".avi": OutputType("avi", "mjpeg", "libmp3lame", constant_rate=True),
}

#: OpenCV's four-character codes, as ``CODEC`` took them before: the FFmpeg encoder for each.
FOURCC_ENCODERS = {
    "mp4v": "mpeg4",
    "xvid": "mpeg4",
    "divx": "mpeg4",
    "fmp4": "mpeg4",
    "mjpg": "mjpeg",
    "avc1": "libx264",
    "h264": "libx264",
    "x264": "libx264",
    "vp90": "libvpx-vp9",
    "vp09": "libvpx-vp9",
    "vp80": "libvpx",
    "hevc": "libx265",
    "hvc1": "libx265",
    "hev1": "libx265",
    "av01": "libsvtav1",
}

#: CRF when none is given: 18 is near-transparent H.264 (x264's own default is 23);
#: VP9's scale is 0..63 and 30 is about as good.
_DEFAULT_CRF = {"libx264": 18, "libx265": 22, "libvpx-vp9": 30, "libvpx": 10, "libsvtav1": 35}
_CRF_MAX = {"libx264": 51, "libx265": 51}
#: Encoder settings: fast enough that encoding a 640x480 frame costs a few ms of CPU
#: beside a network forward of about 100 ms (benchmarks/video.py measures the command).
_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast"},
    "libx265": {"preset": "veryfast", "x265-params": "log-level=error"},
    # Constant quality (b=0 with crf); realtime speed 8 is ~3 ms a frame, "good" ~16 ms.
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "b": "0"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "b": "8M"},
    "libsvtav1": {"preset": "10"},
    # Fixed quantiser 3 (as ffmpeg -q:v 3): MJPEG and MPEG-4 Part 2 have no CRF.
    "mjpeg": {"flags": "+qscale", "global_quality": str(3 * 118)},
    "mpeg4": {"flags": "+qscale", "global_quality": str(3 * 118)},
}
#: Frames up to this many pixels (1080p) are encoded, and decoded, in one thread.
ONE_THREAD_PIXELS = 1920 * 1088
_NAMES = {
    "h264": "H.264",
    "hevc": "H.265",
    "vp9": "VP9",
    "vp8": "VP8",
    "av1": "AV1",
    "mjpeg": "MJPEG",
    "mpeg4": "MPEG-4 Part 2",
}


def partial_path(out: Path) -> Path:
    """The temporary name a video is written under beside ``out``: ``.<stem>.partial<suffix>``."""
    return out.with_name(f".{out.stem}.partial{out.suffix}")


@dataclass(frozen=True)
class Encoding:
    """How ``OUT`` is written (made by :func:`plan_encoding`).

    Attributes:
        type: The suffix's :class:`OutputType`.
        encoder: FFmpeg encoder (``libx264``).
        codec: The codec it writes (``h264``).
        options: Encoder options (preset, crf...).
        pix_fmt: Pixel format written.
        crf: The quality used, or ``None`` for codecs without one.
    """

    type: OutputType
    encoder: str
    codec: str
    options: dict
    pix_fmt: str
    crf: int | None

    @property
    def label(self) -> str:
        """``H.264 (libx264, yuv420p, crf 18)``."""
        crf = f", crf {self.crf}" if self.crf is not None else ""
        return f"{_NAMES.get(self.codec, self.codec)} ({self.encoder}, {self.pix_fmt}{crf})"


def _suffixes() -> str:
    return ", ".join(OUTPUT_TYPES)


def plan_encoding(out: str | os.PathLike, codec: str | None = None, crf: int | None = None) -> Encoding:
    """Check ``OUT``'s suffix, ``CODEC`` and ``CRF`` and say how the file will be written.

    Args:
        out: The output path; its suffix picks the container (:data:`OUTPUT_TYPES`).
        codec: An FFmpeg encoder (``libx264``, ``libvpx-vp9``, ``mpeg4``...) or one of
            OpenCV's four-character codes (``mp4v``, ``MJPG``, ``avc1``); ``None``: the suffix's.
        crf: Constant quality for encoders that have it (lower: better, bigger).

    Raises:
        VideoError: Unknown suffix, encoder, an encoder the container cannot hold,
            a CRF the encoder has not or out of its range, or PyAV missing.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_TYPES:
        raise VideoError(
            f"OUT={out}: unknown video type {out.suffix or '(no suffix)'!r}; end the name with {_suffixes()} "
            "(e.g. result.mp4: H.264 that browsers play)"
        )
    kind = OUTPUT_TYPES[suffix]
    av = require_av(f"OUT={out}")
    name = kind.video if codec is None else FOURCC_ENCODERS.get(codec.lower(), codec)
    try:
        c = av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        raise VideoError(
            f"CODEC={codec}: FFmpeg (PyAV) has no video encoder of that name; e.g. libx264, libx265, libvpx-vp9, "
            "mpeg4, mjpeg (python -m av --codecs lists them)"
        ) from None
    if c.type != "video":
        raise VideoError(f"CODEC={codec}: {c.name} encodes {c.type}, not video; e.g. CODEC=libx264")
    if c.canonical_name not in _container_codecs(av, kind):
        raise VideoError(
            f"CODEC={codec}: a {suffix} file cannot hold {_NAMES.get(c.canonical_name, c.canonical_name)}; "
            f"choose another codec or suffix (e.g. .mkv takes most)"
        )
    encoder = c.name
    options = dict(_OPTIONS.get(encoder, {}))
    ctx = av.CodecContext.create(encoder, "w")
    private = getattr(getattr(ctx, "supported_options", None), "private", None)
    if private is not None:
        crf_option = next((o for o in private if o.name == "crf"), None)
    else:  # a PyAV that does not list encoder options: the encoders known to have CRF
        crf_option = _KnownCrf(63) if encoder in _DEFAULT_CRF else None
    if crf is not None and crf_option is None:
        raise VideoError(
            f"CRF={crf}: {encoder} has no constant-quality setting; leave CRF out, or use libx264 or libvpx-vp9"
        )
    if crf_option is not None:
        top = _CRF_MAX.get(encoder, int(crf_option.max))
        if crf is not None and not 0 <= crf <= top:
            raise VideoError(f"CRF={crf} is invalid for {encoder}: expected 0..{top} (lower: better and bigger files)")
        crf = crf if crf is not None else _DEFAULT_CRF.get(encoder)
        if crf is not None:
            options["crf"] = str(crf)
    formats = [f.name for f in (c.video_formats or [])]
    pix_fmt = next((f for f in ("yuv420p", "yuvj420p") if f in formats), formats[0] if formats else "yuv420p")
    if encoder == "mjpeg" and "yuvj420p" in formats:
        pix_fmt = "yuvj420p"  # JPEG's full range, as players expect from MJPEG
    return Encoding(kind, encoder, c.canonical_name, options, pix_fmt, crf)


@dataclass(frozen=True)
class _KnownCrf:
    max: float


def _container_codecs(av, kind: OutputType) -> set[str]:
    import io

    with av.open(io.BytesIO(), "w", format=kind.format) as c:
        return set(c.supported_codecs)


def _opens(av, encoding: Encoding, width: int, height: int, time_base: Fraction = Fraction(1, 25)) -> bool:
    """Whether the encoder takes frames of this size in this time base (a test open, nothing written)."""
    ctx = av.CodecContext.create(encoding.encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, encoding.pix_fmt
    ctx.time_base = time_base
    ctx.options = {k: v for k, v in encoding.options.items()}
    try:
        ctx.open()
    except av.error.FFmpegError:
        return False
    return True


@dataclass
class OutputInfo:
    """What a written video file holds, as FFmpeg reads it back (:func:`probe`)."""

    codec: str
    pix_fmt: str
    width: int
    height: int
    frames: int
    duration_s: float
    sound: list[str]

    def describe(self, sound_how: str | None = None) -> str:
        """``H.264 yuv420p, 64x48, 30 frames, 1.00 s; sound: aac`` (``sound_how`` in place of the codec list)."""
        sound = f"; sound: {sound_how or ', '.join(self.sound)}" if self.sound else "; no sound"
        return (
            f"{_NAMES.get(self.codec, self.codec)} {self.pix_fmt}, {self.width}x{self.height}, "
            f"{self.frames} frames, {self.duration_s:.2f} s{sound}"
        )


def probe(path: str | os.PathLike) -> OutputInfo:
    """Read back what a video file holds (codec, size, frames, duration, sound codecs)."""
    av = require_av(f"OUT={path}")
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = v.frames or sum(1 for p in c.demux(v) if p.size)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        duration = c.duration / 1e6 if c.duration else float((v.duration or 0) * (v.time_base or 0))
        return OutputInfo(
            v.codec_context.codec.canonical_name,
            v.codec_context.pix_fmt or "?",
            v.codec_context.width,
            v.codec_context.height,
            frames,
            duration,
            [a.codec_context.codec.canonical_name for a in c.streams.audio],
        )


class VideoSink:
    """Draw and encode frames into a video file in a writer thread (see the module's text).

    Args:
        path: The output; its suffix picks the container (:data:`OUTPUT_TYPES`).
        size: ``(width, height)`` of every frame.
        time_base: Seconds per unit of the frames' ``pts`` (``None``: ``1 / rate``).
        rate: The average frame rate (a hint for the encoder; AVI's only rate).
        codec, crf: See :func:`plan_encoding`.
        style, color, background: How frames are drawn (:func:`.video_render.render_frame`).
        sound_from: A video file whose sound goes into the output (``None``: no sound).

    Attributes:
        encoding: How the file is written.
        padded: ``(width, height)`` written when the codec needed a padded size, else ``None``.
        sound: The sound written (:class:`.video_audio.SoundTracks`), or ``None``.
        notes: Lines about sound that could not be kept.
        result: After :meth:`finish`, the file written, or ``None``.

    Raises:
        VideoError: Unknown suffix or codec, a size no setting takes, a file that
            cannot be created, or PyAV missing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        size: tuple[int, int],
        *,
        time_base: Fraction | None = None,
        rate: float | None = None,
        codec: str | None = None,
        crf: int | None = None,
        style: str = "overlay",
        color: Sequence[int] = (255, 0, 0),
        background: Sequence[int] = (0, 255, 0),
        sound_from: str | os.PathLike | None = None,
        queue_size: int = 8,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise VideoError(f"OUT={self.path}: is a folder; give a file name such as {self.path / 'result.mp4'}")
        if style not in STYLES:
            raise VideoError(f"STYLE={style!r} is invalid: expected one of {', '.join(STYLES)}")
        self.encoding = enc = plan_encoding(self.path, codec, crf)
        av = self._av = require_av(f"OUT={self.path}")
        self.size = (int(size[0]), int(size[1]))
        self.style, self.color, self.background = style, tuple(color), tuple(background)
        w, h = self.size
        self.padded: tuple[int, int] | None = None
        if (w % 2 or h % 2) and not _opens(av, enc, w, h):
            even = (w + w % 2, h + h % 2)
            if not _opens(av, enc, *even):
                raise VideoError(f"OUT={self.path}: {enc.encoder} cannot encode {w}x{h} frames; try another CODEC")
            self.padded = even
        coded = self.padded or self.size
        self.tmp = partial_path(self.path)
        try:
            self._container = av.open(str(self.tmp), "w", format=enc.type.format, options=dict(enc.type.options))
        except (av.error.FFmpegError, OSError) as e:
            _remove(self.tmp)
            raise VideoError(f"OUT={self.path}: cannot write there ({av_error(e)}); choose a writable folder") from None
        try:
            self._stream = s = self._container.add_stream(enc.encoder, options=dict(enc.options))
            s.width, s.height = coded
            s.pix_fmt = enc.pix_fmt
            if coded[0] * coded[1] <= ONE_THREAD_PIXELS:
                # One encoder thread keeps up to 1080p (x264 veryfast: ~3 ms a 640x480 frame, the
                # network ~100 ms) and spends less: a thread pool cost 0.6 ms more a frame.
                s.codec_context.thread_count = 1
            if enc.type.constant_rate or time_base is None:
                time_base = rate_time_base(rate or DEFAULT_FPS)
            time_base = Fraction(time_base)
            if not _opens(av, enc, *coded, time_base):
                # MPEG-4 Part 2 takes denominators up to 65535 (MP4's 1/90000 is refused):
                # 1/60000 still places frames to the sub-millisecond, else the frame rate's.
                time_base = next(
                    (
                        tb
                        for tb in (Fraction(1, 60000), rate_time_base(rate or DEFAULT_FPS))
                        if _opens(av, enc, *coded, tb)
                    ),
                    time_base,
                )
            self.time_base = time_base
            s.time_base = self.time_base
            s.codec_context.time_base = self.time_base
            if rate:
                s.codec_context.framerate = Fraction(rate).limit_denominator(100000)
            # BT.601 matrix, limited range: converted so in the writer and tagged so, for players.
            self._convert = enc.pix_fmt == "yuv420p"
            if self._convert:
                cc = s.codec_context
                cc.colorspace = 6  # AVCOL_SPC_SMPTE170M: the BT.601 matrix
                cc.color_primaries = cc.color_trc = 1  # BT.709: sRGB's primaries, the usual SDR curve
                cc.color_range = 1  # AVCOL_RANGE_MPEG
            self.notes: list[str] = []
            self.sound: SoundTracks | None = None
            if sound_from is not None:
                try:
                    self.sound = SoundTracks(
                        av, Path(sound_from), self._container, enc.type.copy, enc.type.audio, self.path.suffix.lower()
                    )
                    self.notes += self.sound.notes
                except av.error.FFmpegError as e:
                    self.notes.append(f"sound left out: the source's sound could not be read ({av_error(e)})")
        except BaseException:
            self._container.close()
            _remove(self.tmp)
            raise
        self._last_pts: int | None = None
        self._end: Fraction | None = None  # where the last frame ends (source time)
        self._cut = True
        self.result: Path | None = None
        self.closed = False
        self._worker = Worker(self._write, "fsp-video-write", queue_size, on_end=self._close)

    @property
    def codec(self) -> str:
        """The encoder (``libx264``)."""
        return self.encoding.encoder

    @property
    def count(self) -> int:
        """Frames written so far."""
        return self._worker.count

    def _write(self, item) -> None:
        import cv2

        bgr, shown, rendered, pts, time_base, duration = item
        img = (
            rendered
            if rendered is not None
            else render_frame(bgr, shown, self.style, color=self.color, background=self.background)
        )
        if self.padded is not None:
            (w, h), (pw, ph) = self.size, self.padded
            img = cv2.copyMakeBorder(img, 0, ph - h, 0, pw - w, cv2.BORDER_REPLICATE)
        img = np.ascontiguousarray(img)
        if self._convert and img.shape[0] % 2 == 0 and img.shape[1] % 2 == 0:
            # OpenCV's BGR -> I420 is BT.601, limited range: the stream's tags.
            frame = self._av.VideoFrame.from_ndarray(cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        else:
            frame = self._av.VideoFrame.from_ndarray(img, format="bgr24")
            if self._convert:
                frame = frame.reformat(format="yuv420p", dst_colorspace="ITU601", dst_color_range="MPEG")
        t = pts * Fraction(time_base)
        out_pts = round(t / self.time_base)
        if self._last_pts is not None and out_pts <= self._last_pts:
            out_pts = self._last_pts + 1  # encoders need rising timestamps (AVI's rounding, broken sources)
        self._last_pts = out_pts
        frame.pts = out_pts
        frame.time_base = self.time_base
        shown_for = duration * Fraction(time_base) if duration else None
        if shown_for is not None:
            frame.duration = max(1, round(shown_for / self.time_base))
        self._end = t + (shown_for if shown_for is not None else self.time_base)
        if self.sound is not None:
            self.sound.pump(float(t))  # the sound up to this frame, not past it (an early stop ends there)
        self._container.mux(self._stream.encode(frame))

    def put(
        self,
        bgr: np.ndarray,
        shown: np.ndarray | None = None,
        rendered: np.ndarray | None = None,
        *,
        pts: int,
        time_base: Fraction,
        duration: int | None = None,
    ) -> None:
        """Queue a frame: the decoded frame and its face weight (drawn in the
        writer thread), or an already ``rendered`` BGR frame, with its timestamp."""
        self._worker.put((bgr, shown, rendered, pts, time_base, duration))

    def _close(self, failed: bool) -> None:
        # In the writer thread, after its last frame: flush, sound, trailer, rename.
        keep = self._worker.count > 0 and not failed
        error: BaseException | None = None
        if keep:
            try:
                pause("finishing")
                self._container.mux(self._stream.encode(None))
                if self.sound is not None:
                    self.sound.finish(float(self._end) if self._cut and self._end is not None else None)
            except BaseException as e:  # noqa: BLE001 - raised below, after the file is removed
                error, keep = e, False
        if self.sound is not None:
            self.sound.close()
        try:
            self._container.close()
        except Exception as e:  # noqa: BLE001 - a failed file is removed
            if keep:
                error, keep = e, False
        if keep:
            os.replace(self.tmp, self.path)
            self.result = self.path
        else:
            _remove(self.tmp)
        if error is not None:
            raise error

    def finish(self, *, cut_sound: bool = True) -> Path | None:
        """Write what is queued, close the file and rename it to ``path``; the
        writer thread does it, this waits (again, when called again after an
        interrupted wait).

        Args:
            cut_sound: End the sound where the pictures end (a run that stopped
                early); ``False`` keeps all of it (the whole source was read).

        Returns:
            ``path``, or ``None`` when no frame was written (then no file is left).
        """
        if not self.closed:
            self._cut = cut_sound
        try:
            self._worker.finish()
        finally:
            self.closed = not self._worker.alive
        return self.result

    def abort(self) -> None:
        """Stop without keeping the file."""
        with contextlib.suppress(BaseException):  # the file is dropped anyway
            self._worker.finish(abort=True)
        self.closed = True
        _remove(self.tmp)


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
