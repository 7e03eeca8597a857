"""Video files the video tests make with PyAV, and what they read back from outputs.

Clips are what phones and editors give: H.264 with an AAC sine tone, a
variable frame rate (each frame's pts set by hand in a fine time base), a
display rotation (the display-matrix side data phones write), odd sizes. Each
frame carries a marker, a block whose grey level says which frame it is, so
order and timing can be read back from any output, even a lossy one.

Everything read back goes through PyAV directly (or OpenCV, or FFmpeg's own
command-line tool), never through the package's video code.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

#: Marker: two blocks at the top left (in the picture as shown), each a base-16 digit of the
#: frame number as a grey level 24 + 13 * digit: 13 levels apart, so two generations of
#: lossy coding (about 2 levels each here) cannot turn one digit into the next.
MARKS = ((slice(0, 8), slice(0, 12)), (slice(0, 8), slice(12, 24)))
_STEP, _BASE = 13, 24
TONE_HZ = 440.0
SAMPLE_RATE = 48000


def draw_marker(img: np.ndarray, i: int) -> None:
    for block, digit in zip(MARKS, (i % 16, i // 16)):
        img[block] = _BASE + _STEP * digit


def read_marker(rgb: np.ndarray) -> int:
    """The frame number a picture's marker says (each digit to its nearest level)."""
    digits = [
        int(round((float(rgb[r.start + 2 : r.stop - 2, c.start + 2 : c.stop - 2].mean()) - _BASE) / _STEP))
        for r, c in MARKS
    ]
    return digits[0] + 16 * digits[1]


def picture(i: int, width: int, height: int, seed: int = 0, n: int = 30) -> np.ndarray:
    """Frame ``i`` as it should be shown (RGB): a textured ellipse moving over a
    gradient, and the marker."""
    import cv2

    rng = np.random.default_rng(seed)
    # Blurred noise: detail at the scale of real footage, which 4:2:0 codecs keep.
    texture = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.5)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.dstack([xx * 200 // max(width, 1) + 30, yy * 160 // max(height, 1) + 40, np.full_like(xx, 140)])
    img = img.astype(np.uint8)
    cx = width * (0.3 + 0.4 * i / max(n - 1, 1))
    inside = ((xx - cx) / (width * 0.22)) ** 2 + ((yy - height * 0.55) / (height * 0.3)) ** 2 < 1
    img[inside] = texture[inside]
    draw_marker(img, i)
    return img


@dataclass
class Clip:
    path: Path
    times: list[float]  # each frame's presentation time, seconds
    pictures: list[np.ndarray]  # each frame as it should be shown (RGB)
    sound_s: float  # seconds of sound written (0: none)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.pictures[0].shape[:2]
        return w, h


def make_clip(
    path: Path,
    *,
    size: tuple[int, int] = (64, 48),
    n: int = 30,
    fps: float = 30.0,
    steps: list[float] | None = None,
    rotation: int | None = None,
    sound: str | None = "aac",
    video_codec: str = "libx264",
    seed: int = 0,
) -> Clip:
    """Write a clip with PyAV.

    Args:
        size: ``(width, height)`` as shown (a rotated clip stores it turned).
        steps: Seconds between frames, cycled (a variable frame rate); ``None``: ``1 / fps``.
        rotation: Display rotation in degrees (counter-clockwise, FFmpeg's sign), set as phones do.
        sound: Sound codec of a 440 Hz tone as long as the pictures (``aac``, ``libopus``,
            ``pcm_s16le``...), or ``None``.
    """
    width, height = size
    tb = Fraction(1, 90000)
    times, t = [], 0.0
    for i in range(n):
        times.append(round(t * 90000) / 90000)
        t += steps[i % len(steps)] if steps else 1.0 / fps
    end = t
    pictures = [picture(i, width, height, seed, n) for i in range(n)]
    with av.open(str(path), "w") as out:
        v = out.add_stream(video_codec, rate=round(fps))
        stored = (height, width) if rotation in (90, -90, 270) else (width, height)
        v.width, v.height = stored
        v.pix_fmt = "yuv420p"
        v.time_base = tb
        v.codec_context.time_base = tb
        if video_codec == "libx264":
            v.codec_context.options = {"crf": "12", "preset": "veryfast"}
        if rotation is not None:
            if not hasattr(v, "set_display_rotation"):
                pytest.skip("writing a display rotation needs PyAV >= 18 (VideoStream.set_display_rotation)")
            v.set_display_rotation(rotation)
        a = None
        if sound:
            a = out.add_stream(sound, rate=SAMPLE_RATE)
            a.layout = "mono"
        for i, (img, ti) in enumerate(zip(pictures, times)):
            stored_img = np.ascontiguousarray(np.rot90(img, -round(rotation / 90))) if rotation else img
            f = av.VideoFrame.from_ndarray(stored_img, format="rgb24")
            f.pts = round(ti / tb)
            f.time_base = tb
            out.mux(v.encode(f))
        out.mux(v.encode(None))
        sound_s = 0.0
        if a is not None:
            samples = int(round(end * SAMPLE_RATE))
            tone = (0.4 * np.sin(2 * np.pi * TONE_HZ * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
            chunk = 1024
            for k in range(0, samples, chunk):
                part = tone[None, k : k + chunk]
                if a.codec_context.name.startswith("pcm_s16"):
                    frame = av.AudioFrame.from_ndarray((part * 32767).astype(np.int16), format="s16", layout="mono")
                else:
                    frame = av.AudioFrame.from_ndarray(part, format="flt", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = k
                frame.time_base = Fraction(1, SAMPLE_RATE)
                out.mux(a.encode(frame))
            out.mux(a.encode(None))
            sound_s = samples / SAMPLE_RATE
    return Clip(path, times, pictures, sound_s)


def write_sequence(folder: Path, names: list[str], size: tuple[int, int] = (64, 48), seed: int = 0) -> list[np.ndarray]:
    """PNG files ``names`` (frame i in name i) with markers; returns their pictures (RGB)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    pics = []
    for i, name in enumerate(names):
        img = picture(i, *size, seed=seed, n=len(names))
        cv2.imwrite(str(folder / name), img[:, :, ::-1])
        pics.append(img)
    return pics


# --------------------------------------------------------------------------
# Reading outputs back (PyAV directly).


@dataclass
class Probe:
    codec: str
    pix_fmt: str
    width: int
    height: int
    times: list[float]
    pictures: list[np.ndarray]  # RGB, as decoded (no rotation applied)
    rotation: int
    duration_s: float  # the container's
    sound: list[str]  # codec of each sound stream
    sound_s: float  # decoded samples of the first sound stream / rate
    sound_packets: list[bytes]
    format: str


def probe(path: Path) -> Probe:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        times = [float(f.pts * f.time_base) for f in frames]
        pics = [f.to_ndarray(format="rgb24") for f in frames]
        rotation = int(frames[0].rotation or 0) if frames else 0
        fmt = c.format.name
        duration = c.duration / 1e6 if c.duration else 0.0
        cc = v.codec_context
        codec, pix, w, h = cc.codec.canonical_name, cc.pix_fmt, cc.width, cc.height
    sound, sound_s, packets = [], 0.0, []
    with av.open(str(path)) as c:
        sound = [a.codec_context.codec.canonical_name for a in c.streams.audio]
        if c.streams.audio:
            a = c.streams.audio[0]
            packets = [bytes(p) for p in c.demux(a) if p.size]
    with av.open(str(path)) as c:
        if c.streams.audio:
            samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
            sound_s = samples / c.streams.audio[0].codec_context.sample_rate
    return Probe(codec, pix, w, h, times, pics, rotation, duration, sound, sound_s, packets, fmt)


def sound_span(path: Path) -> float:
    """Seconds from the first sound packet's start to the last one's end, by their
    timestamps (a decoder may add a codec's priming samples, e.g. AAC in Matroska)."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.audio[0]) if p.size and p.pts is not None]
    start = min(float(p.pts * p.time_base) for p in packets)
    return max(float((p.pts + (p.duration or 0)) * p.time_base) for p in packets) - start


def sound_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def first_channel(path: Path) -> tuple[np.ndarray, int]:
    """The first sound stream's first channel, decoded with PyAV, and its sample rate."""
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        parts = []
        for f in c.decode(a):
            x = f.to_ndarray()
            parts.append(x[0] if f.format.is_planar else x.reshape(-1)[:: f.layout.nb_channels])
        return np.concatenate(parts).astype(np.float64), a.codec_context.sample_rate


def dominant_hz(path: Path) -> float:
    """The strongest frequency of the first sound stream."""
    x, rate = first_channel(path)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def near(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two pictures at a quarter of their size: what
    survives lossy coding, while a turned, shifted or swapped picture stays far."""
    import cv2

    h, w = a.shape[:2]
    small = (max(1, w // 4), max(1, h // 4))
    return float(
        np.abs(
            cv2.resize(a, small, interpolation=cv2.INTER_AREA).astype(int)
            - cv2.resize(b, small, interpolation=cv2.INTER_AREA).astype(int)
        ).mean()
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------
# Weights and a web server.


def random_linknet_state(seed: int = 0, *, blank: bool = False) -> dict:
    """LinkNet34 with random weights whose masks have edges (logits spread out), or,
    ``blank``, that finds no face anywhere (so a drawn frame is the frame itself)."""
    import torch

    from face_segmentation_pytorch.models.linknet import LinkNet34

    torch.manual_seed(seed)
    model = LinkNet34()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.finalconv3.weight.mul_(40.0)
        if blank:
            model.finalconv3.weight.zero_()
            model.finalconv3.bias.fill_(-30.0)
    return model.state_dict()


def write_linknet_weights(folder: Path, seed: int = 0, *, blank: bool = False) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(random_linknet_state(seed, blank=blank), folder / "linknet_oneflow_model.pt")
    return folder


class _RangeHandler(SimpleHTTPRequestHandler):
    """``http.server``'s file handler with byte ranges (``206 Partial Content``), as
    web servers answer: without them a browser takes a video as unseekable."""

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = Path(self.translate_path(self.path))
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if m is None or not path.is_file() or not (m.group(1) or m.group(2)):
            super().do_GET()
            return
        data = path.read_bytes()
        size = len(data)
        if m.group(1):
            start, end = int(m.group(1)), int(m.group(2)) if m.group(2) else size - 1
        else:
            start, end = max(0, size - int(m.group(2))), size - 1
        end = min(end, size - 1)
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start : end + 1])

    def log_message(self, *args) -> None:
        pass


class FolderServer:
    """A web server on 127.0.0.1 serving a folder (byte ranges included), in a thread:
    real HTTP for the browser."""

    def __init__(self, folder: Path) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(folder)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
