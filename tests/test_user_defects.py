"""Defects a new user met (issue 22), each reproduced the way the user met it: the
command run as a subprocess on the files a user has (the batch command's own
outputs as the next command's input, a mask saved as JPEG, a red label mask).
Each test failed on the code before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_cli import _photo, run_cli

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch.training.data import make_synthetic_dataset


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"face_segmentation_pytorch.{module}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _grown(mask: np.ndarray, r: int) -> np.ndarray:
    """Every pixel within Euclidean distance r of the mask, by brute force."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                shifted = np.zeros_like(mask)
                shifted[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = mask[
                    max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
                ]
                out |= shifted
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """The seed's per-image IoU, written out here."""
    return float((a & b).sum() / ((a | b).sum() + 1e-6))


# --------------------------------------------------------------------------- evaluation


def test_evaluate_scores_the_batch_outputs_beside_the_photos(tmp_path, slim_weights_dir):
    """Item 1: PRED_DIR holds photos and, beside them, the batch command's default
    outputs (a.png and a.png__heatmap.png): the heatmap is scored, not the photo."""
    photos, gt = tmp_path / "photos", tmp_path / "gt"
    photos.mkdir()
    gt.mkdir()
    for i, name in enumerate(("a", "b")):
        _photo(64, 80, i).save(photos / f"{name}.png")
    assert run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={photos}", "DEVICE=cpu").returncode == 0
    expected = {}
    for name in ("a", "b"):
        heat = np.asarray(Image.open(photos / f"{name}.png__heatmap.png"))
        mask = heat > 127  # probability v/255 above 0.5: the ground truth is the heatmap's own mask
        assert 0 < mask.sum() < mask.size
        Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{name}.png")
        expected[name] = _iou(mask, mask)
    proc = run_module("evaluate", f"PRED_DIR={photos}", f"GT_DIR={gt}", "PROGRESS=false", "OUT=-")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    per = {r["name"]: r for r in doc["per_image"]}
    for name in ("a", "b"):
        assert Path(per[name]["prediction"]).name == f"{name}.png__heatmap.png"
        assert per[name]["iou"] == pytest.approx(expected[name], rel=1e-9)


def _ellipse_mask(h: int, w: int, scale: int = 1) -> Image.Image:
    im = Image.new("L", (w * scale, h * scale), 0)
    ImageDraw.Draw(im).ellipse([w * scale // 5, h * scale // 6, w * scale * 4 // 5, h * scale * 5 // 6], fill=255)
    return im


def test_one_mask_rule_on_both_sides(tmp_path):
    """Item 2: the same file as ground truth and as prediction scores 1, whatever
    its values (anti-aliased edge, red-on-black label); a JPEG-saved ground truth
    is read by the same rule; the report counts the files that were not two-valued."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    # Anti-aliased: drawn at 4x and downsampled, so the edge holds grey levels.
    soft = _ellipse_mask(48, 64, 4).resize((64, 48), Image.LANCZOS)
    assert len(np.unique(np.asarray(soft))) > 10
    soft.save(pred / "soft.png")
    soft.save(gt / "soft.png")
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = np.asarray(_ellipse_mask(48, 64))
    Image.fromarray(red).save(pred / "red.png")
    Image.fromarray(red).save(gt / "red.png")
    hard = _ellipse_mask(48, 64)
    hard.save(pred / "jpeg.png")
    hard.convert("RGB").save(gt / "jpeg.jpg", quality=75)
    decoded = np.asarray(Image.open(gt / "jpeg.jpg").convert("RGB")).max(axis=2)
    assert len(np.unique(decoded)) > 2  # real JPEG noise
    want_jpeg = _iou(np.asarray(hard) > 127, decoded >= 128)

    proc = run_module("evaluate", f"PRED_DIR={pred}", f"GT_DIR={gt}", "PROGRESS=false", "OUT=-")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    per = {r["name"]: r["iou"] for r in doc["per_image"]}
    assert per["soft"] == pytest.approx(1.0, abs=1e-6)
    assert per["red"] == pytest.approx(1.0, abs=1e-6)
    assert per["jpeg"] == pytest.approx(want_jpeg, rel=1e-9) and want_jpeg > 0.98
    assert doc["summary"]["not_two_valued_ground_truth"] == 3
    assert doc["summary"]["not_two_valued_predictions"] == 2
    assert "not two-valued  3 ground truth, 2 prediction" in proc.stderr


def test_training_reads_masks_by_the_same_rule(tmp_path):
    """Item 2, training side: a JPEG-saved training mask is the mask, not every
    non-zero speck of JPEG noise."""
    from face_segmentation_pytorch.training.data import load_mask

    hard = _ellipse_mask(48, 64)
    hard.convert("RGB").save(tmp_path / "m.jpg", quality=75)
    decoded = np.asarray(Image.open(tmp_path / "m.jpg").convert("RGB")).max(axis=2)
    assert (decoded > 0).sum() > (decoded >= 128).sum()  # noise a "non-zero" rule would count
    np.testing.assert_array_equal(load_mask(tmp_path / "m.jpg"), decoded >= 128)


def test_scores_compare_shapes_before_flattening():
    """Item 3: (300, 400) against (400, 300) has as many pixels, but is another image."""
    a, b = np.zeros((300, 400), bool), np.zeros((400, 300), bool)
    for fn in (fsp.iou, fsp.dataset_iou, fsp.f1_score, fsp.pixel_accuracy):
        with pytest.raises(ValueError, match=r"pred \(300, 400\), gt \(400, 300\)"):
            fn(a, b)
    with pytest.raises(ValueError, match="differ in shape"):
        fsp.SegmentationScores().update(a, b)


def test_evaluate_scores_a_training_runs_own_validation_split(tmp_path, slim_weights_dir):
    """Item 4: RUN_DIR scores the run's best.pt on the very images the run validated
    on (its seeded split), so the score equals the run's own validation score."""
    data = make_synthetic_dataset(tmp_path / "data", 12, size=32, seed=4)
    run = tmp_path / "run"
    proc = run_module(
        "train",
        f"DATA_DIR={data}",
        f"OUT_DIR={run}",
        "WEIGHTS=fcn8s_500",
        "INIT=pretrained",
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        "INPUT_SIZE=32",
        "EPOCHS=1",
        "BATCH_SIZE=4",
        "LR=0.0001",
        "VAL_FRACTION=0.25",
        "SEED=3",
        "THREADS=1",
        "PROGRESS=false",
        "DEVICE=cpu",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_mean_iou"])
    scored = run_module("evaluate", f"RUN_DIR={run}", "PROGRESS=false", "DEVICE=cpu", "OUT=-")
    assert scored.returncode == 0, scored.stderr
    doc = json.loads(scored.stdout)
    assert doc["summary"]["images"] == 3  # 0.25 of 12
    assert doc["summary"]["mean_iou"] == pytest.approx(best["val_mean_iou"], abs=1e-3)
    assert doc["summary"]["dataset_iou"] == pytest.approx(best["val_dataset_iou"], abs=1e-3)
    # The same split by its keys; another seed is another split, so refused with RUN_DIR.
    same = run_module(
        "evaluate",
        "WEIGHTS=fcn8s_500",
        f"WEIGHTS_FILE={run / 'best.pt'}",
        f"DATA_DIR={data}",
        "VAL_FRACTION=0.25",
        "SEED=3",
        "INPUT_SIZE=32",
        "PROGRESS=false",
        "DEVICE=cpu",
        "OUT=-",
    )
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["per_image"] == doc["per_image"]
    other = run_module("evaluate", f"RUN_DIR={run}", "SEED=4")
    assert other.returncode == 2 and other.stderr.startswith("error: SEED=4 differs from the run's 3")


def test_evaluate_without_out_prints_the_table_only(tmp_path):
    """Item 13: no OUT, no OUT_DIR: the table, not the whole per-image JSON after it."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    _ellipse_mask(16, 16).save(pred / "a.png")
    _ellipse_mask(16, 16).save(gt / "a.png")
    proc = run_module("evaluate", f"PRED_DIR={pred}", f"GT_DIR={gt}", "PROGRESS=false")
    assert proc.returncode == 0, proc.stderr
    assert "mean_iou" in proc.stdout and "{" not in proc.stdout and "per_image" not in proc.stdout


# --------------------------------------------------------------------------- batch reruns


def test_a_rerun_with_other_settings_stops_instead_of_keeping_old_masks(tmp_path, slim_weights_dir):
    """Item 5: the rerun rule."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    imgs.mkdir()
    _photo(64, 64, 1).save(imgs / "a.png")
    base = [f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={imgs}", f"OUT_DIR={out}", "DEVICE=cpu"]
    assert run_cli(*base, "MASK_THRESHOLD=0.5").returncode == 0
    first = (out / "a__mask.png").read_bytes()
    changed = run_cli(*base, "MASK_THRESHOLD=0.9", "DILATE=2")
    assert changed.returncode == 2, changed.stderr
    line = changed.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: OUT_DIR={out} holds outputs made with other settings")
    assert "MASK_THRESHOLD was 0.5, now 0.9" in line and "DILATE was 0, now 2" in line
    assert "OVERWRITE=true" in line and "another OUT_DIR" in line
    assert (out / "a__mask.png").read_bytes() == first  # nothing touched
    # Other weights are other settings too.
    other = tmp_path / "other.pt"
    other.write_bytes((slim_weights_dir / "face_seg_fcn8s.pt").read_bytes())
    assert "WEIGHTS_FILE was null" in run_cli(*base, "MASK_THRESHOLD=0.5", f"WEIGHTS_FILE={other}").stderr
    # The same settings resume as before.
    same = run_cli(*base, "MASK_THRESHOLD=0.5")
    assert same.returncode == 0 and "nothing to do" in same.stderr
    # OVERWRITE=true redoes the image with the new settings, which become the record.
    redo = run_cli(*base, "MASK_THRESHOLD=0.9", "DILATE=2", "OVERWRITE=true")
    assert redo.returncode == 0, redo.stderr
    heat_run = run_cli(
        f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={imgs}", f"OUT_DIR={tmp_path / 'h'}", "DEVICE=cpu"
    )
    assert heat_run.returncode == 0
    p = np.asarray(Image.open(tmp_path / "h" / "a__heatmap.png")) / 255.0  # 8-bit: 1/255 from the float map
    got = np.asarray(Image.open(out / "a__mask.png")) > 0
    assert (out / "a__mask.png").read_bytes() != first
    assert np.all(got[p > 0.91]) and not np.any(got & ~_grown(p > 0.89, 2))
    assert run_cli(*base, "MASK_THRESHOLD=0.9", "DILATE=2").returncode == 0
    assert run_cli(*base, "MASK_THRESHOLD=0.5").returncode == 2


def test_boxes_that_name_no_image_or_lie_outside_are_reported(tmp_path, slim_weights_dir):
    """Item 11: such rows were ignored without a word; each is a line, the run goes on."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _photo(40, 60, 2).save(imgs / "a.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.png": [[100, 5, 10, 10], [5, 5, 20, 20]], "nothere.jpg": [[0, 0, 5, 5]]}))
    proc = run_cli(
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={imgs}",
        f"BOXES={boxes}",
        "DEVICE=cpu",
        f"OUT_DIR={tmp_path / 'out'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"BOXES={boxes}: 'nothere.jpg' names no input image" in proc.stderr
    assert f"BOXES={boxes}: box [100, 5, 10, 10] of a.png lies outside its 60x40 image; ignored" in proc.stderr
    assert (tmp_path / "out" / "a__heatmap.png").is_file()


def test_no_torch_warning_on_any_image(tmp_path, slim_weights_dir):
    """Item 13: torch's "NumPy array is not writable" warning never reaches the user."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(imgs / "dot.png")
    _photo(1, 9, 3).save(imgs / "row.png")
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={imgs}", "DEVICE=cpu", "INPUT_SIZE=null")
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "not writable" not in proc.stderr
