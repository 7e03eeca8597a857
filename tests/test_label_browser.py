"""The labelling page in a real headless Chromium, driven as a user drives it: mouse drags on
the canvas with the brush and the eraser, keyboard shortcuts, the Save button; then the
mask file the server wrote is compared with the stroke computed here (every pixel whose
centre lies within the brush radius of the path, minus the eraser's; pixels within 1 px
of either edge are left out as the anti-aliasing band). The page must also resume after
a server restart, start each frame from the model's mask, and refuse what it must.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import face_segmentation_pytorch as fsp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import chromium_or_skip  # noqa: E402
from label_clips import (  # noqa: E402
    LabelProcess,
    Page,
    decode_video,
    distance_to_path,
    random_linknet,
    scene,
    write_video,
)

N = 40


@pytest.fixture(scope="module")
def driver():
    d = chromium_or_skip()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", scene(N, seed=1)[0])


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    return random_linknet(tmp_path_factory.mktemp("weights") / "start.pt", seed=2)


def assert_mask_matches(saved: np.ndarray, strokes: list[tuple[np.ndarray, float, bool]], band: float = 1.0) -> None:
    """``strokes``: ``(distance map, radius, paints face)`` in order. Pixels within ``band`` of any
    stroke's edge are the anti-aliasing band and not compared."""
    expected = np.zeros(saved.shape, bool)
    unsure = np.zeros(saved.shape, bool)
    for dist, radius, face in strokes:
        expected[dist <= radius] = face
        unsure |= np.abs(dist - radius) <= band
    wrong = (saved != expected) & ~unsure
    assert not wrong.any(), (
        f"{int(wrong.sum())} pixels differ away from the edges, e.g. {np.argwhere(wrong)[:5].tolist()}"
    )
    # The band hides a radius off by a pixel; the area does not (the page draws without anti-aliasing).
    assert abs(int(saved.sum()) - int(expected.sum())) <= 0.03 * expected.sum(), (saved.sum(), expected.sum())


def saved_mask(project: Path, frame: int) -> np.ndarray:
    m = np.asarray(Image.open(project / "data" / "masks" / f"{frame:06d}.png"))
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    return m == 255


# --------------------------------------------------------------------------- tests


def test_brush_eraser_undo_redo_save_and_the_page_resumes_after_a_restart(driver, tmp_path, clip, start_weights):
    from selenium.webdriver.common.keys import Keys

    project = tmp_path / "project"
    server = LabelProcess(f"PROJECT={project}", f"SOURCE={clip}", f"WEIGHTS_FILE={start_weights}", "INPUT_SIZE=64")
    try:
        page = Page(driver, server.url)
        assert page.text("frame-info").startswith("frame 2 of 39")  # the first evenly spaced frame
        page.go_to(11)
        size = (64, 64)
        page.keys("c")  # clear: start from an empty mask
        assert not page.shown_mask().any()
        page.keys("[", "[", "[", "[")  # radius 8 -> 4
        assert page.text("radius-value") == "4"
        brush = page.drag([(10.3, 20.2), (30.1, 26.0), (50.6, 30.4)], size)
        page.keys("e", "[")  # eraser, radius 3
        assert page.text("radius-value") == "3"
        eraser = page.drag([(30.5, 8.0), (30.5, 45.0)], size)
        page.save()
        stroke = (distance_to_path(brush, size), 4.0, True)
        erased = (distance_to_path(eraser, size), 3.0, False)
        assert_mask_matches(saved_mask(project, 11), [stroke, erased])
        assert np.array_equal(page.shown_mask(), saved_mask(project, 11))

        page.chord(Keys.CONTROL, "z")  # undo the eraser
        page.save()
        assert_mask_matches(saved_mask(project, 11), [stroke])
        page.chord(Keys.CONTROL, Keys.SHIFT, "z")  # redo it
        page.save()
        assert_mask_matches(saved_mask(project, 11), [stroke, erased])
        labelled = saved_mask(project, 11)
        assert page.d.find_element("css selector", "#labels button[data-frame='11']")
    finally:
        rc, err = server.stop()
    assert rc == 130, err

    # A new server on the same project: the page opens where it was, with its labels.
    server = LabelProcess(f"PROJECT={project}")
    try:
        page = Page(driver, server.url)
        assert page.text("frame-info") == "frame 11 of 39 (labelled)"
        chips = [b.text for b in page.d.find_elements("css selector", "#labels button")]
        assert chips == ["11"]
        assert np.array_equal(page.shown_mask(), labelled)
    finally:
        server.stop()


def test_a_frame_opens_with_the_models_mask_and_the_threshold_slider_rethresholds(
    driver, tmp_path, clip, start_weights
):
    from selenium.webdriver.common.keys import Keys

    project = tmp_path / "project"
    server = LabelProcess(f"PROJECT={project}", f"SOURCE={clip}", f"WEIGHTS_FILE={start_weights}", "INPUT_SIZE=64")
    try:
        page = Page(driver, server.url)
        page.go_to(20)
        page.save()  # untouched: the model's mask at the page's threshold
        seg = fsp.FaceSegmenter(
            "linknet34_oneflow", weights_file=start_weights, input_size=64, threshold=None, device="cpu", progress=False
        )
        p = seg.segment(decode_video(clip)[20]).pmap
        for threshold in (0.5, 0.6):
            if threshold == 0.6:
                slider = page.d.find_element("id", "threshold")
                slider.click()  # the middle: 0.50
                slider.send_keys(*[Keys.ARROW_RIGHT] * 10)
                assert page.text("threshold-value") == "0.60"
                page.d.find_element("css selector", "header h1").click()
                page.save()
            saved = saved_mask(project, 20)
            near = np.abs(p - threshold) <= 1.0 / 255  # the page sees p in steps of 1/255
            assert np.array_equal(saved[~near], (p > threshold)[~near])
            assert 0.05 < saved.mean() < 0.95  # a real test: the mask is neither empty nor full
    finally:
        server.stop()


def test_the_page_refuses_requests_without_the_token_and_paths_outside(driver, tmp_path, clip, start_weights):
    project = tmp_path / "project"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("TOP SECRET")
    server = LabelProcess(f"PROJECT={project}", f"SOURCE={clip}", f"WEIGHTS_FILE={start_weights}", "INPUT_SIZE=64")
    os.symlink(secret, project / "outside")
    try:
        base = f"http://{server.host}:{server.port}"
        driver.get(f"{base}/")
        body = driver.find_element("css selector", "body").text
        assert "forbidden: this address needs the token" in body
        driver.get(f"{base}/files/outside/key.txt?token={server.token}")
        body = driver.find_element("css selector", "body").text
        assert "outside the project" in body and "TOP SECRET" not in body
        driver.get(f"{base}/files/label.json?token={server.token}")
        assert '"frames": 40' in driver.find_element("css selector", "body").text
    finally:
        server.stop()
