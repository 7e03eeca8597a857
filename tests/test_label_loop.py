"""The loop learns: on a generated clip with a hand over the face that the starting model paints
as face, six labels made through the page (five through its HTTP API with masks drawn here,
one with the brush, the fill and the eraser in a real Chromium), the fine-tune the page
starts and the application the page starts raise the IoU on the held-out frames far above
the starting model's, which the one command (``APPLY=true``) measures first.

Measured on 2 shared Xeon cores (2026-12): the starting model's mean IoU on the 34
held-out frames is 0.605 (it covers the hand), the fine-tuned one's 0.90-0.91 (the label drawn
in the browser differs by a pixel here and there between runs), after 16 epochs
of 3 steps with the recipe's SGD at LR=0.1 (AdamW at 0.003: 0.914, but its larger last.pt
makes each epoch slower). The test takes about 60 s (starting model 19 s, the first
application 5 s, labels 5 s, fine-tune 23 s, the second application 6 s), up to 110 s
when other tests share the cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import chromium_or_skip  # noqa: E402
from label_clips import (  # noqa: E402
    LabelProcess,
    Page,
    geometry,
    mask_png,
    scene,
    train_start_model,
    wait_for,
    write_video,
)

N = 40
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def driver():
    d = chromium_or_skip()
    yield d
    d.quit()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def read_masks(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(N)]
    return [np.asarray(Image.open(f).convert("L")) > 127 for f in files]


def job_end(server: LabelProcess, kind: str) -> dict | None:
    """The ``kind`` job once it has ended (the page starts it a moment after the click)."""
    job = server.json("GET", "/api/job")[1]["job"]
    return job if job and job["kind"] == kind and job["state"] not in ("running", "stopping") else None


def label_in_the_browser(page: Page, frame: int) -> None:
    """What a user does: clear, outline the face with a thin brush, fill it, erase the hand."""
    size = (64, 64)
    cx, cy, ax, ay, left = geometry(frame, N)
    page.go_to(frame)
    page.keys("c", *["["] * 7)  # clear; radius 8 -> 1
    assert page.text("radius-value") == "1"
    angles = np.linspace(0, 2 * np.pi, 41)
    page.drag([(cx + (ax - 0.5) * np.cos(a), cy + (ay - 0.5) * np.sin(a)) for a in angles], size)
    page.keys("f")
    page.click_at((cx, cy - ay / 2), size)  # the forehead: inside the outline
    page.keys("e", "]", "]")  # eraser, radius 3
    assert page.text("radius-value") == "3"
    top = cy - 3
    for x in (left + 3, left + 9, left + 15):
        page.drag([(x, top + 3), (x, 63.9)], size)
    page.drag([(left + 3, top + 3), (left + 15, top + 3)], size)
    page.save()


def test_labels_from_the_page_a_fine_tune_and_an_application_raise_iou_far_above_the_start(driver, tmp_path):
    clock = [time.perf_counter()]
    phases = {}

    def took(phase: str) -> None:
        clock.append(time.perf_counter())
        phases[phase] = round(clock[-1] - clock[-2], 1)

    frames, faces, hands = scene(N, seed=1)
    truth = faces & ~hands
    clip = write_video(tmp_path / "clip.mp4", frames)
    start = train_start_model(tmp_path / "start")
    took("starting model")
    project = tmp_path / "project"
    keys = [
        f"PROJECT={project}",
        f"SOURCE={clip}",
        f"WEIGHTS_FILE={start}",
        "INPUT_SIZE=64",
        "START_FRAMES=6",
        "EPOCHS=16",
        "BATCH_SIZE=2",
        "LR=0.1",
        "THREADS=1",
    ]  # the recipe's SGD, a higher rate

    # The starting model over the whole clip: the one command, before any label.
    r = subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch.label", *keys, "APPLY=true"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"masks in {project / 'apply' / 'start' / 'masks'}" in r.stderr
    before = read_masks(project / "apply" / "start" / "masks")
    took("apply (start)")

    server = LabelProcess(f"PROJECT={project}")  # the rest is remembered
    try:
        _, state = server.json("GET", "/api/state")
        chosen = [s["frame"] for s in state["suggestions"] if s["reason"] == "start"]
        assert chosen == [3, 10, 16, 23, 30, 36]  # floor((k + 0.5) * 40 / 6)
        by_page = 23
        for f in chosen:
            if f != by_page:
                status, _, _ = server.request("POST", f"/api/label/{f}", mask_png(truth[f]))
                assert status == 200
        page = Page(driver, server.url)
        label_in_the_browser(page, by_page)
        drawn = np.asarray(Image.open(project / "data" / "masks" / f"{by_page:06d}.png")) == 255
        assert iou(drawn, truth[by_page]) > 0.85  # the hand-made label is a good one
        took("labels")

        # Train from the page (its defaults: EPOCHS=16, from the starting weights); wait for the end.
        assert page.d.find_element("id", "train-from").get_attribute("value") == "start"
        page.click("train")
        job = wait_for(lambda: job_end(server, "train"), 600, "the fine-tune")
        assert job["state"] == "done" and job["round"] == "round-001" and job["epochs_done"] == 16, job
        page.wait.until(lambda d: page.text("model-info") == "model: round-001 best.pt")
        took("fine-tune")

        # Look: a held-out frame with the new model's mask; the screenshot for docs/label.md.
        page.go_to(27)
        page.wait.until(lambda d: "epoch 16/16" in page.text("job-info"))
        # The new model's least sure frames, with its masks in the preview strip.
        page.wait.until(
            lambda d: d.execute_script(
                "const imgs = [...document.querySelectorAll('#preview img')];"
                "return imgs.length >= 3 && imgs.every((i) => i.complete && i.naturalWidth > 0);"
            )
        )
        shot = tmp_path / "label_page.png"
        page.d.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
        if os.environ.get("FSP_UPDATE_DOCS_SCREENSHOT") == "1":
            shutil.copyfile(shot, ROOT / "docs" / "label_page.png")

        # Apply from the page: the video command with round-001's best.pt over the whole clip.
        page.click("apply")
        job = wait_for(lambda: job_end(server, "apply"), 300, "the application")
        assert job["state"] == "done" and job["kind"] == "apply", job
        took("apply (tuned)")
    finally:
        server.stop()
    after = read_masks(project / "apply" / "round-001" / "masks")
    assert (project / "apply" / "round-001" / "overlay.mp4").stat().st_size > 0

    held_out = [i for i in range(N) if i not in chosen]
    start_iou = np.mean([iou(before[i], truth[i]) for i in held_out])
    tuned_iou = np.mean([iou(after[i], truth[i]) for i in held_out])
    print(f"held-out mean IoU: starting model {start_iou:.3f}, after one round {tuned_iou:.3f}; seconds: {phases}")
    assert start_iou < 0.72  # it paints the hand as face
    assert tuned_iou > 0.85
    assert tuned_iou - start_iou > 0.2

    # The starting model's error is the hand: it covers most of it; the tuned one little of it.
    def covered(masks: list[np.ndarray]) -> float:
        return float(np.mean([(masks[i] & hands[i] & faces[i]).sum() / (hands[i] & faces[i]).sum() for i in held_out]))

    # (0.15-0.21 after one round in runs on this 2-core Xeon: the hand's edge stays
    # uncertain; the start covers over 0.6 of it.)
    assert covered(before) > 0.6 and covered(after) < 0.35
