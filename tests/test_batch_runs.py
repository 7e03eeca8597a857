"""Batch runs that survive real folders: resuming, Ctrl-C, list and glob inputs,
failure logs, post-processing and extra outputs; and the FaceSegmenter API."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import _last_line, _photo, run_cli

import face_segmentation_pytorch as fsp


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "photos"
    (d / "nested" / "deeper").mkdir(parents=True)
    _photo(80, 60, 0).save(d / "one.jpg")
    _photo(50, 70, 1).save(d / "nested" / "two.png")
    _photo(40, 40, 2).save(d / "nested" / "deeper" / "three.webp")
    return d


@pytest.fixture(scope="module")
def segmenter(slim_weights_dir):
    return fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", progress=False)


def test_segmenter_api(segmenter, folder):
    one = segmenter.segment(folder / "one.jpg")
    assert one.pmap.shape == (80, 60) and one.pmap.dtype == np.float32
    assert one.mask.dtype == bool and np.array_equal(one.mask, one.pmap > 0.5)
    assert one.path == folder / "one.jpg"
    many = segmenter.segment([str(folder / "one.jpg"), np.asarray(fsp.load_image(folder / "nested" / "two.png"))])
    assert [m.size for m in many] == [(80, 60), (50, 70)]
    np.testing.assert_allclose(many[0].pmap, one.pmap, atol=1e-6)  # batch of 2 vs 1: float noise only


def test_segmenter_postprocess_and_validation(slim_weights_dir, folder):
    model = fsp.FaceSegmentationNet.from_state_dict(
        torch.load(slim_weights_dir / "face_seg_fcn8s.pt", weights_only=True)
    )
    plain = fsp.FaceSegmenter(model, device="cpu").segment(folder / "one.jpg")
    post = fsp.FaceSegmenter(model, device="cpu", postprocess="full").segment(folder / "one.jpg")
    np.testing.assert_array_equal(post.mask, fsp.full_postprocess(plain.mask))
    assert fsp.FaceSegmenter(model, device="cpu", threshold=None).segment(folder / "one.jpg").mask is None
    with pytest.raises(ValueError, match="give a threshold"):
        fsp.FaceSegmenter(model, threshold=None, postprocess="largest")
    with pytest.raises(ValueError, match="face_channel=30 does not exist"):
        fsp.FaceSegmenter(model, face_channel=30)


def test_resume_skips_finished_images_and_overwrite_redoes_them(folder, slim_weights_dir, tmp_path):
    out = tmp_path / "out"
    args = [f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}", f"OUT_DIR={out}", "RECURSIVE=true"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert made == ["nested/deeper/three__heatmap.png", "nested/two__heatmap.png", "one__heatmap.png"]
    (out / "nested" / "two__heatmap.png").unlink()
    stamp = (out / "one__heatmap.png").stat().st_mtime_ns
    second = run_cli(*args)
    assert "2 already done" in second.stderr
    assert "1 image done, 0 failed, 2 skipped" in _last_line(second)
    assert (out / "nested" / "two__heatmap.png").exists()
    assert (out / "one__heatmap.png").stat().st_mtime_ns == stamp
    third = run_cli(*args, "OVERWRITE=true")
    assert "3 images done, 0 failed, 0 skipped" in _last_line(third)
    # Nothing left to do: no model is loaded, even from a folder with no weights.
    fourth = run_cli(f"MODEL_PARAMS_DIR={tmp_path / 'no_weights_here'}", *args[1:])
    assert fourth.returncode == 0 and "nothing to do" in _last_line(fourth)
    assert not (tmp_path / "no_weights_here").exists()


def test_list_file_input_with_missing_entries_and_failure_log(folder, slim_weights_dir, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listing = folder / "todo.txt"
    listing.write_text("# images to segment\none.jpg\nnested/two.png\n\nmissing.jpg\nbroken.png\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={listing}", f"OUT_DIR={out}", "PROGRESS=false")
    assert proc.returncode == 1
    assert (out / "one__heatmap.png").exists() and (out / "nested" / "two__heatmap.png").exists()
    log = out / "face_segmentation_failures.csv"
    assert f"failures listed in {log}" in _last_line(proc)
    rows = list(csv.DictReader(log.open(encoding="utf-8")))
    assert [(Path(r["path"]).name, r["stage"]) for r in rows] == [("missing.jpg", "read"), ("broken.png", "read")]
    assert "no such file" in rows[0]["reason"]
    # Fix the inputs and run again: the stale log goes away with the failures.
    listing.write_text("one.jpg\nnested/two.png\n", encoding="utf-8")
    again = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={listing}", f"OUT_DIR={out}")
    assert again.returncode == 0 and not log.exists()


def test_glob_input(folder, slim_weights_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}/**/*.png", f"OUT_DIR={out}")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.rglob("*.png")] == ["two__heatmap.png"]


def test_postprocessed_masks_and_extra_outputs(folder, slim_weights_dir, segmenter):
    proc = run_cli(
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={folder}",
        "MASK_THRESHOLD=0.5",
        "POSTPROCESS=largest,fill_holes",
        "OVERLAY=true",
        "CUTOUT=true",
        f"GALLERY={folder}/gallery.jpg",
        "DEVICE=cpu",  # CPU numbers: the expected mask comes from the CPU segmenter, compared exactly
    )
    assert proc.returncode == 0, proc.stderr
    mask = np.asarray(Image.open(folder / "one.jpg__mask.png")) > 0
    expected = fsp.fill_holes(fsp.largest_component(segmenter.segment(folder / "one.jpg").mask))
    np.testing.assert_array_equal(mask, expected)
    assert Image.open(folder / "one.jpg__overlay.png").mode == "RGB"
    cut = Image.open(folder / "one.jpg__cutout.png")
    assert cut.mode == "RGBA" and set(np.unique(np.asarray(cut)[..., 3])) <= {0, 255}
    assert Image.open(folder / "gallery.jpg").width > 3 * 100


@pytest.mark.parametrize(
    "fmt, name, check",
    [
        (
            "png16",
            "one.jpg__heatmap16.png",
            lambda p: np.asarray(Image.open(p)).dtype == np.uint16 or Image.open(p).mode.startswith("I"),
        ),
        ("npy", "one.jpg__heatmap.npy", lambda p: np.load(p).dtype == np.float32 and np.load(p).shape == (80, 60)),
    ],
)
def test_heatmap_formats(folder, slim_weights_dir, segmenter, fmt, name, check):
    # CPU numbers: the npy map is compared with the CPU segmenter's to 1e-6.
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}", f"HEATMAP_FORMAT={fmt}", "DEVICE=cpu")
    assert proc.returncode == 0, proc.stderr
    assert check(folder / name)
    if fmt == "npy":
        np.testing.assert_allclose(np.load(folder / name), segmenter.segment(folder / "one.jpg").pmap, atol=1e-6)


def test_postprocess_without_threshold_is_refused(folder, slim_weights_dir):
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}", "POSTPROCESS=full")
    assert proc.returncode == 2 and "add MASK_THRESHOLD=0.5" in proc.stderr


def test_unwritable_out_dir_is_a_clear_error(folder, slim_weights_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}", f"OUT_DIR={blocker}/out")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: OUT_DIR={blocker}/out: cannot write there")


def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path, slim_weights_dir):
    """Ctrl-C lands while the run waits for its last image (a named pipe the test
    holds), so the test, not the machine's speed, decides where: exit 130, the 39
    finished images whole, and the rerun does the last one."""
    from gate import gated_image_list, wait_for_outputs

    listed, last = gated_image_list(tmp_path, _photo)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "face_segmentation_pytorch",
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={listed}",
        f"OUT_DIR={out}",
        "PROGRESS=false",
        "DEVICE=cpu",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        last.wait_until_read(proc)
        # The 39 images before it finish while the reader waits on the pipe
        # (one of the two reader threads is free): a wait for what must happen.
        wait_for_outputs(out, proc, count=39)
        proc.send_signal(signal.SIGINT)
    finally:
        last.release()  # an empty read: the run is already interrupted
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last_line = err.strip().splitlines()[-1]
    assert "interrupted;" in last_line and "run the same command again to resume" in last_line
    assert "Traceback" not in err
    finished = sorted(out.glob("*__heatmap.png"))
    assert len(finished) == 39
    assert not [p for p in os.listdir(out) if p.endswith(".partial")]
    for p in finished:  # every file under its final name is a whole PNG
        Image.open(p).load()
    buf = io.BytesIO()
    _photo(300, 300, 39).save(buf, format="PNG")
    last.replace_with(buf.getvalue())
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "39 already done" in resumed.stderr
    assert len(list(out.glob("*__heatmap.png"))) == 40
