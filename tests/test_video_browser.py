"""The video command's outputs play in a real browser.

``.mp4`` (H.264, yuv420p, index first) and ``.webm`` (VP9) are served over HTTP
from 127.0.0.1 to the system's headless Chromium (tests/browser.py) in a
``<video>`` element. The page reports what the browser itself decoded: that it
loaded the file, the duration it reads, and the pixels of frames it painted on
a canvas, at the start and after seeking to a frame's time in a
variable-frame-rate clip. Expectations come from the source clip and from
PyAV's decoding of the output, not from the video code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
av = pytest.importorskip("av")

from browser import chromium_or_skip  # noqa: E402
from video_clips import FolderServer, make_clip, near, probe, read_marker, write_linknet_weights  # noqa: E402

from face_segmentation_pytorch.video import main  # noqa: E402

PAGE = "<!doctype html><html><body><video id=v muted preload=auto></video></body></html>"

# Load the source, then paint the frame shown at each of the given times (seconds; null: as loaded).
SCRIPT = """
const [src, times, done] = arguments;
const v = document.getElementById('v');
const paint = () => {
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  return Array.from(g.getImageData(0, 0, c.width, c.height).data);
};
v.onerror = () => done({error: v.error ? v.error.code + ': ' + v.error.message : 'error'});
v.addEventListener('loadeddata', async () => {
  const out = {readyState: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
               frames: []};
  for (const t of times) {
    if (t !== null) {
      await new Promise(resolve => { v.addEventListener('seeked', resolve, {once: true}); v.currentTime = t; });
    }
    out.frames.push(paint());
  }
  done(out);
}, {once: true});
v.src = src;
"""


@pytest.fixture(scope="module")
def driver():
    d = chromium_or_skip()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def blank_weights(tmp_path_factory) -> Path:
    return write_linknet_weights(tmp_path_factory.mktemp("blank"), blank=True)


def _rgb(flat: list[int], width: int, height: int) -> np.ndarray:
    return np.asarray(flat, np.uint8).reshape(height, width, 4)[:, :, :3]


@pytest.mark.parametrize("suffix, codec", [(".mp4", "h264"), (".webm", "vp9")])
def test_the_output_plays_in_chromium(tmp_path, driver, blank_weights, capsys, suffix, codec):
    clip = make_clip(tmp_path / "phone.mp4", n=24, steps=[1 / 60, 1 / 30, 1 / 20, 1 / 45])
    out = tmp_path / f"faces{suffix}"
    rc = main(
        [
            f"SOURCE={clip.path}",
            f"OUT={out}",
            f"MODEL_PARAMS_DIR={blank_weights}",
            "INPUT_SIZE=64",
            "DEVICE=cpu",
            "PROGRESS=false",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    got = probe(out)
    assert got.codec == codec
    with av.open(str(clip.path)) as c:
        source_duration = c.duration / 1e6
    (tmp_path / "page.html").write_text(PAGE)
    server = FolderServer(tmp_path)
    try:
        driver.get(server.url("page.html"))
        k = 17  # a frame in the middle of the clip, sought by its time (middle of its interval)
        seek = (clip.times[k] + clip.times[k + 1]) / 2
        result = driver.execute_async_script(SCRIPT, server.url(out.name), [None, seek])
    finally:
        server.close()
    assert "error" not in result, result
    assert result["readyState"] >= 2  # HAVE_CURRENT_DATA: a frame is decoded
    assert (result["width"], result["height"]) == (64, 48)
    assert abs(result["duration"] - source_duration) < 1 / 30, (result["duration"], source_duration)
    first, middle = (_rgb(f, 64, 48) for f in result["frames"])
    assert first.std() > 20  # a picture, not a blank canvas
    # What Chromium paints is what FFmpeg decodes from the file (colours tagged BT.709, both convert alike)
    # and, up to two generations of coding, the source frame.
    assert np.abs(first.astype(int) - got.pictures[0]).mean() < 3
    assert near(first, clip.pictures[0]) < 6
    assert read_marker(first) == 0 and read_marker(middle) == k  # the frame at its source time
    assert near(middle, clip.pictures[k]) < 6
