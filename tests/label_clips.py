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
    "Page",
    "decode_video",
    "distance_to_path",
    "geometry",
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


def geometry(i: int, n: int, size: int = SIZE) -> tuple[float, float, float, float, float]:
    """Frame ``i`` of ``n``: the face's centre ``(cx, cy)`` and half-axes ``(ax, ay)``, the hand's left edge.

    The hand spans ``left <= x < left + 18`` and ``y >= cy - 3`` (to the bottom)."""
    t = i / max(n - 1, 1)
    cx = size * (0.5 + 0.08 * np.sin(2 * np.pi * t))
    cy = size * (0.45 + 0.05 * np.cos(2 * np.pi * t))
    return cx, cy, size * 15 / 64, size * 20 / 64, 6 + (size - 30) * t


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
        cx, cy, ax, ay, left = geometry(i, n, size)
        face = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        img = background.copy()
        img[face] = SKIN
        for ex in (-6, 6):
            img[((xx - cx - ex) / 3) ** 2 + ((yy - cy + 5) / 2) ** 2 <= 1] = (60, 35, 30)
        img[((xx - cx) / 6) ** 2 + ((yy - cy - 9) / 2) ** 2 <= 1] = (120, 40, 40)
        h = np.zeros_like(face)
        if hand:
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
    """A LinkNet34 weights file with random weights whose probabilities spread over (0, 1):
    on a clip frame, the logits' median is 0 and their spread (std) 2."""
    import torch

    import face_segmentation_pytorch as fsp

    torch.manual_seed(seed)
    model = fsp.LinkNet34()
    torch.save(model.state_dict(), path)
    seg = fsp.FaceSegmenter(
        "linknet34_oneflow", weights_file=path, input_size=SIZE, threshold=None, device="cpu", progress=False
    )
    p = np.clip(seg.segment(scene(1, seed=seed)[0][0]).pmap.astype(np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(p / (1 - p))
    scale, centre = 2.0 / max(float(logits.std()), 1e-6), float(np.median(logits))
    with torch.no_grad():  # logit' = scale * (logit - centre): the last layer is linear
        model.finalconv3.weight.mul_(scale)
        model.finalconv3.bias.sub_(centre).mul_(scale)
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
        data,
        folder / "run",
        weights="linknet34_oneflow",
        input_size=SIZE,
        epochs=6,
        batch_size=4,
        val_fraction=0,
        optimizer="adamw",
        lr=2e-3,
        threads=1,
        progress=False,
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
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, token: str | None = "auto"
    ) -> tuple[int, bytes, dict]:
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


class Page:
    """The page in the browser, with what a user does to it."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        self.wait = WebDriverWait(driver, 60)
        driver.get(url)
        self.wait.until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))

    def text(self, element_id: str) -> str:
        return self.d.find_element("id", element_id).text

    def keys(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.d).send_keys(*keys).perform()

    def chord(self, *modifiers_and_key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        *mods, key = modifiers_and_key
        chain = ActionChains(self.d)
        for m in mods:
            chain.key_down(m)
        chain.send_keys(key)
        for m in reversed(mods):
            chain.key_up(m)
        chain.perform()

    def click(self, element_id: str) -> None:
        self.d.find_element("id", element_id).click()

    def go_to(self, frame: int) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.d.find_element("id", "frame-number")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(frame), Keys.ENTER)
        self.wait.until(lambda d: self.text("frame-info").startswith(f"frame {frame} of"))
        self.d.find_element("css selector", "header h1").click()  # focus back on the page, off the box

    def rect(self) -> tuple[float, float, float, float]:
        return tuple(
            self.d.execute_script(
                "const r = document.getElementById('mask-canvas').getBoundingClientRect();"
                "return [r.left, r.top, r.width, r.height];"
            )
        )

    def drag(self, points: list[tuple[float, float]], size: tuple[int, int]) -> list[tuple[float, float]]:
        """Press, move through ``points`` (image pixels), release; returns the points as the page
        receives them (the mouse moves in whole screen pixels)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        h, w = size
        left, top, width, height = self.rect()
        screen = [(round(left + x * width / w), round(top + y * height / h)) for x, y in points]
        actions = ActionBuilder(self.d, duration=20)
        actions.pointer_action.move_to_location(*screen[0])
        actions.pointer_action.pointer_down()
        for sx, sy in screen[1:]:
            actions.pointer_action.move_to_location(sx, sy)
        actions.pointer_action.pointer_up()
        actions.perform()
        return [((sx - left) * w / width, (sy - top) * h / height) for sx, sy in screen]

    def click_at(self, point: tuple[float, float], size: tuple[int, int]) -> None:
        self.drag([point], size)

    def save(self) -> None:
        before = int(self.d.execute_script("return parseInt(document.body.dataset.saves || '0', 10)"))
        self.click("save")
        self.wait.until(
            lambda d: int(d.execute_script("return parseInt(document.body.dataset.saves || '0', 10)")) == before + 1
        )

    def shown_mask(self) -> np.ndarray:
        """What the page draws as mask now: the overlay canvas's non-transparent pixels."""
        w, h, alpha = self.d.execute_script(
            "const c = document.getElementById('mask-canvas');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "const a = []; for (let i = 3; i < d.length; i += 4) a.push(d[i] > 0 ? 1 : 0);"
            "return [c.width, c.height, a];"
        )
        return np.array(alpha, bool).reshape(h, w)


def distance_to_path(points: list[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """Each pixel centre's distance to the polyline through ``points``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    best = np.full((h, w), np.inf)
    segments = list(zip(points[:-1], points[1:])) or [(points[0], points[0])]
    for (ax, ay), (bx, by) in segments:
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        t = np.zeros_like(xx) if len2 == 0 else np.clip(((xx - ax) * dx + (yy - ay) * dy) / len2, 0, 1)
        best = np.minimum(best, np.hypot(ax + t * dx - xx, ay + t * dy - yy))
    return best
