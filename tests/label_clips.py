"""Helpers of the labelling tests: a generated clip with a hand over the face, its ground truth,
a starting LinkNet34 that paints the hand as face, and the label server as a user starts it.

The clip: a skin-coloured ellipse "face" with dark eyes and mouth, moving a little over
a blocky coloured background, and a skin-coloured striped "hand" (fingers) sliding
across the lower half of the face. Ground truth = face minus hand. The starting model
is LinkNet34 trained briefly on faces without hands (other backgrounds): skin colour
means face to it, so it paints the hand as face, the failure the loop is for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

__all__ = [
    "SIZE",
    "LabelProcess",
    "decode_video",
    "mask_png",
    "random_linknet",
    "scene",
    "train_start_model",
    "wait_for",
    "write_pairs",
    "write_video",
]

SIZE = 64
SKIN = np.array([215.0, 170.0, 140.0])


def scene(n: int, *, size: int = SIZE, seed: int = 0, hand: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(frames (n, H, W, 3) uint8 RGB, face masks (n, H, W) bool, hand masks (n, H, W) bool)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cell = 8
    coarse = rng.uniform(30, 220, (size // cell + 2, size // cell + 2, 3))
    background = np.kron(coarse, np.ones((cell, cell, 1)))[:size, :size]
    frames = np.zeros((n, size, size, 3), np.uint8)
    faces = np.zeros((n, size, size), bool)
    hands = np.zeros((n, size, size), bool)
    for i in range(n):
        t = i / max(n - 1, 1)
        cx = size * (0.5 + 0.08 * np.sin(2 * np.pi * t))
        cy = size * (0.45 + 0.05 * np.cos(2 * np.pi * t))
        face = ((xx - cx) / (size * 15 / 64)) ** 2 + ((yy - cy) / (size * 20 / 64)) ** 2 <= 1
        img = background.copy()
        img[face] = SKIN
        for ex in (-6, 6):
            img[((xx - cx - ex) / 3) ** 2 + ((yy - cy + 5) / 2) ** 2 <= 1] = (60, 35, 30)
        img[((xx - cx) / 6) ** 2 + ((yy - cy - 9) / 2) ** 2 <= 1] = (120, 40, 40)
        h = np.zeros_like(face)
        if hand:
            left = 6 + (size - 30) * t
            h = (xx >= left) & (xx < left + 18) & (yy >= cy - 3)
            fingers = np.floor(yy / 2) % 2 == 0
            img[h & fingers] = SKIN
            img[h & ~fingers] = (150, 105, 85)
        img = img + rng.normal(0, 6, img.shape)
        frames[i] = np.clip(np.rint(img), 0, 255)
        faces[i], hands[i] = face, h
    return frames, faces, hands


def write_video(path: Path, frames: np.ndarray, fps: int = 20) -> Path:
    """An H.264 .mp4 (what users have) written with PyAV, quality high enough that edges stay put."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "8"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video as RGB, decoded in order by PyAV (independently of the label code)."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def mask_png(mask: np.ndarray, mode: str = "L") -> bytes:
    """A boolean mask as PNG bytes: white face on black (``"L"``), or white face on transparent (``"RGBA"``)."""
    import io

    from PIL import Image

    v = np.where(mask, 255, 0).astype(np.uint8)
    if mode == "RGBA":
        im = Image.fromarray(np.dstack([v, v, v, v]))
    else:
        im = Image.fromarray(v)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def random_linknet(path: Path, seed: int = 0) -> Path:
    """A LinkNet34 weights file with random weights whose probabilities spread over (0, 1)."""
    import torch

    from face_segmentation_pytorch import LinkNet34

    torch.manual_seed(seed)
    model = LinkNet34()
    with torch.no_grad():
        model.finalconv3.weight.mul_(40.0)
    torch.save(model.state_dict(), path)
    return path


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    """Poll ``condition()`` until it returns something true (returned); fail after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def write_pairs(folder: Path, frames: np.ndarray, masks: np.ndarray) -> Path:
    """images/ + masks/ PNGs, the train command's layout."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for k, (f, m) in enumerate(zip(frames, masks)):
        Image.fromarray(f).save(folder / "images" / f"{k:04d}.png")
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(folder / "masks" / f"{k:04d}.png")
    return folder


def train_start_model(folder: Path) -> Path:
    """LinkNet34 trained briefly (48 steps, about 20 s on 2 cores) on faces without hands; its best.pt."""
    import face_segmentation_pytorch as fsp

    parts = [scene(8, seed=100 + s, hand=False) for s in range(4)]
    data = write_pairs(folder / "data", np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    result = fsp.train(
        data, folder / "run", weights="linknet34_oneflow", input_size=SIZE, epochs=6, batch_size=4,
        val_fraction=0, optimizer="adamw", lr=2e-3, threads=1, progress=False,
    )
    return result.best_path


class LabelProcess:
    """``python -m face_segmentation_pytorch.label KEY=VALUE ...`` in a subprocess, as a user starts it.

    Waits for the line with the address (a blocking read: no timing guess), then
    offers real HTTP requests to it.
    """

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "face_segmentation_pytorch.label", *self.args, "PORT=0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()
                self.proc.wait()
                raise RuntimeError(f"the label server exited {self.proc.returncode} before serving: {err}")
            self.lines.append(line)
            if " open http://" in line:
                self.url = line.split(" open ", 1)[1].strip()
                break
        parts = urllib.parse.urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self.token = urllib.parse.parse_qs(parts.query)["token"][0]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: str | None = "auto") -> tuple[int, bytes, dict]:
        """``(status, body, headers)`` of one request; ``token=None`` sends none, ``"auto"`` the right one."""
        conn = HTTPConnection(self.host, self.port, timeout=60)
        h = dict(headers or {})
        if token == "auto":
            h["X-Token"] = self.token
        elif token is not None:
            h["X-Token"] = token
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, data, dict(r.getheaders())

    def json(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        body = None if payload is None and method == "GET" else json.dumps(payload or {}).encode()
        status, data, _ = self.request(method, path, body, {"Content-Type": "application/json"})
        return status, json.loads(data)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120) -> tuple[int, str]:
        """Send ``sig`` (Ctrl-C) and wait; ``(exit status, stderr)``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err
