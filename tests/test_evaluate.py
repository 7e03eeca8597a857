"""Scores: fsp.iou and friends on hand-computed cases; the evaluate command on real
files in both modes, run as a subprocess as the README shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet
from face_segmentation_pytorch.training.data import make_synthetic_dataset


def run_evaluate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch.evaluate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- hand-computed scores

A = np.array([[1, 1], [0, 0]], bool)  # prediction
B = np.array([[1, 0], [1, 0]], bool)  # ground truth: 1 shared pixel, 3 in the union


def test_iou_of_one_image_by_hand():
    assert fsp.iou(A, B) == pytest.approx(1 / (3 + 1e-6), rel=1e-12)
    assert fsp.iou(A, A) == pytest.approx(2 / (2 + 1e-6), rel=1e-12)
    assert fsp.iou(A, ~A) == 0.0
    # Both empty: the seed's rule gives 0 / (0 + 1e-6) = 0, not 1.
    empty = np.zeros((2, 2), bool)
    assert fsp.iou(empty, empty) == 0.0 and fsp.dataset_iou(empty, empty) == 0.0
    # 0/255 and 0/1 arrays and torch tensors are all masks.
    assert fsp.iou(A.astype(np.uint8) * 255, torch.from_numpy(B)) == fsp.iou(A, B)
    with pytest.raises(ValueError, match="differ in shape"):
        fsp.iou(A, np.zeros((3, 2), bool))


def test_mean_and_dataset_iou_f1_and_accuracy_by_hand():
    full = np.ones((2, 2), bool)
    pred = np.stack([A, full])  # image 1: I=1, U=3; image 2: I=4, U=4
    gt = np.stack([B, full])
    assert fsp.iou_per_image(pred, gt) == pytest.approx([1 / 3, 1.0], rel=1e-5)
    assert fsp.mean_iou(pred, gt) == pytest.approx((1 / 3 + 1) / 2, rel=1e-5)
    assert fsp.dataset_iou(pred, gt) == pytest.approx(5 / 7, rel=1e-12)
    # TP = 5, FP = 1, FN = 1, TN = 1 over 8 pixels.
    assert fsp.f1_score(pred, gt) == pytest.approx(2 * 5 / (2 * 5 + 1 + 1), rel=1e-12)
    assert fsp.pixel_accuracy(pred, gt) == pytest.approx(6 / 8, rel=1e-12)
    scores = fsp.SegmentationScores()
    scores.update(A, B, ["a"])
    scores.update(full, full, ["b"])
    scores.update(np.zeros((2, 2)), np.zeros((2, 2)), ["empty"])
    s = scores.summary()
    assert s["images"] == 3 and s["empty_both"] == 1
    assert s["mean_iou"] == pytest.approx((1 / 3 + 1 + 0) / 3, rel=1e-5)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (5, 1, 1, 5)
    assert [r["name"] for r in scores.per_image()] == ["a", "b", "empty"]


# --------------------------------------------------------------------------- predictions folder


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def pred_case(tmp_path) -> tuple[Path, Path]:
    """Four ground truths (8x8, a 4x4 face square) and predictions under the CLI's names:
    a: <stem>__mask.png (0/255), exact; b: <image name>__mask.png, one row short;
    c: <stem>__heatmap.png, probabilities 0.6 in the face and 0.4 in a 2x4 strip beside it;
    d: no prediction."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    face = np.zeros((8, 8), np.uint8)
    face[2:6, 2:6] = 1
    for stem in "abcd":
        _save(face * (255 if stem != "b" else 1), gt_dir / f"{stem}.png")  # 0/255 and 0/1 ground truths
    _save(face * 255, pred_dir / "a__mask.png")
    short = face.copy()
    short[5] = 0
    _save(short * 255, pred_dir / "b.jpg__mask.png")
    heat = np.zeros((8, 8), np.uint8)
    heat[2:6, 2:6] = round(0.6 * 255)
    heat[2:6, 6:8] = round(0.4 * 255)
    _save(heat, pred_dir / "c__heatmap.png")
    (pred_dir / "notes.txt").write_text("not a prediction")
    return pred_dir, gt_dir


def test_prediction_folder_scored_by_hand(pred_case, tmp_path):
    pred_dir, gt_dir = pred_case
    out = tmp_path / "report.json"
    proc = run_evaluate(f"PRED_DIR={pred_dir}", f"GT_DIR={gt_dir}", f"OUT={out}")
    assert proc.returncode == 1, proc.stderr  # d has no prediction
    report = json.loads(out.read_text())
    per = {r["name"]: r for r in report["per_image"]}
    assert set(per) == {"a", "b", "c"}
    assert per["a"]["iou"] == pytest.approx(16 / 16, rel=1e-6)
    assert per["b"]["iou"] == pytest.approx(12 / 16, rel=1e-6)
    assert per["c"]["iou"] == pytest.approx(16 / 16, rel=1e-6)  # 0.4 < THRESHOLD 0.5
    assert Path(per["b"]["prediction"]).name == "b.jpg__mask.png"
    s = report["summary"]
    assert s["mean_iou"] == pytest.approx((1 + 0.75 + 1) / 3, rel=1e-6)
    assert s["dataset_iou"] == pytest.approx(44 / 48)
    assert s["failures"] == 1 and s["mean_iou_failures_as_0"] == pytest.approx((1 + 0.75 + 1) / 4, rel=1e-6)
    assert report["failures"][0]["name"] == "d" and "no prediction" in report["failures"][0]["reason"]
    # The table names the failure and the scores.
    assert "mean_iou        0.9167" in proc.stdout and "d: no prediction" in proc.stdout
    # THRESHOLD moves the heatmap's cut: at 0.3 the 0.4 strip is face too (I=16, U=24).
    lower = run_evaluate(f"PRED_DIR={pred_dir}", f"GT_DIR={gt_dir}", "THRESHOLD=0.3", "PROGRESS=false", "OUT=-")
    doc = json.loads(lower.stdout)  # OUT=-: JSON on stdout, the table on stderr
    assert {r["name"]: r["iou"] for r in doc["per_image"]}["c"] == pytest.approx(16 / 24, rel=1e-6)
    assert "mean_iou" in lower.stderr


def test_prediction_of_another_size_is_a_failure_and_ambiguous_names_an_error(pred_case):
    from face_segmentation_pytorch.errors import ConfigError
    from face_segmentation_pytorch.training.evaluation import evaluate_predictions

    pred_dir, gt_dir = pred_case
    _save(np.zeros((4, 4), np.uint8), pred_dir / "d__mask.png")
    report = evaluate_predictions(pred_dir, gt_dir)
    assert "4x4 (WxH), the ground truth 8x8" in dict(report.failures)["d"]
    # A second mask for a (from an image a.png beside a.jpg): which one to score is
    # the user's call, so the whole evaluation stops with the candidates named.
    _save(np.zeros((8, 8), np.uint8), pred_dir / "a.png__mask.png")
    with pytest.raises(
        ConfigError, match=r"several predictions for one ground truth \(a: a.png__mask.png, a__mask.png\)"
    ):
        evaluate_predictions(pred_dir, gt_dir)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to score: give PRED_DIR=<predictions>, or IMGS_DIR=<images> with WEIGHTS=<entry>"),
        (["IMGS_DIR=x"], "IMGS_DIR needs WEIGHTS=<entry>"),
        (["PRED_DIR=x", "IMGS_DIR=y"], "not both"),
        (["PRED_DIR=x", "THRESHOLD=1.5"], "THRESHOLD=1.5 is invalid"),
        (["PRED_DIR=nowhere"], "PRED_DIR="),
        (["PRED_DIR=x", "TRESHOLD=0.4"], "unknown key 'TRESHOLD'; did you mean THRESHOLD?"),
        (["DATA_DIR=x", "WEIGHTS=linknet34_oneflow"], "DATA_DIR brings its own images and masks; drop GT_DIR"),
        (["PRED_DIR=x", "PRECISION=fp64"], "PRECISION='fp64' is invalid: expected fp32, tf32, fp16 or bf16"),
        (["PRED_DIR=x", "PRECISION=bf16"], "PRECISION and COMPILE apply to IMGS_DIR or DATA_DIR"),
        (["PRED_DIR=x", "COMPILE=maybe"], "COMPILE='maybe' is invalid: expected true or false"),
    ],
)
def test_evaluate_command_mistakes(tmp_path, monkeypatch, capsys, args, message):
    from face_segmentation_pytorch.evaluate import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    code = main([f"GT_DIR={tmp_path}", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- a model on images


@pytest.fixture(scope="module")
def slim_run(tmp_path_factory) -> tuple[Path, Path]:
    """A slim 2-class FCN-8s state_dict (as a training run's best.pt) and 32x32 images with masks."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(3)
    model = FaceSegmentationNet(2, channel_divisor=32)
    with torch.no_grad():
        model.score_fr.bias.copy_(torch.tensor([0.0, 0.02]))  # about half the pixels face
    torch.save(model.state_dict(), folder / "best.pt")
    data = make_synthetic_dataset(folder / "data", 6, size=32, seed=9)
    return folder / "best.pt", data


def test_model_mode_scores_what_face_segmenter_predicts(slim_run, tmp_path):
    weights, data = slim_run
    (data / "masks" / "train_00099.png").write_bytes((data / "masks" / "train_00000.png").read_bytes())  # no image
    proc = run_evaluate(
        "WEIGHTS=fcn8s_300_no_aug",
        f"WEIGHTS_FILE={weights}",
        "INPUT_SIZE=32",
        f"IMGS_DIR={data / 'images'}",
        f"GT_DIR={data / 'masks'}",
        f"OUT_DIR={tmp_path}",
        "BATCH_SIZE=4",
        "DEVICE=cpu",  # CPU numbers: compared exactly with the CPU FaceSegmenter's masks below
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["failures"] == [
        {"name": "train_00099", "reason": f"no image for this ground truth in {data / 'images'}"}
    ]
    # Independently: FaceSegmenter's masks, scored here with NumPy.
    seg = fsp.FaceSegmenter("fcn8s_300_no_aug", weights_file=weights, input_size=32, device="cpu")
    expected = {}
    for path in sorted((data / "images").iterdir()):
        pred = seg.segment(path).mask
        gt = np.asarray(Image.open(data / "masks" / path.name)) > 0
        expected[path.stem] = (pred & gt).sum() / ((pred | gt).sum() + 1e-6)
    got = {r["name"]: r["iou"] for r in report["per_image"]}
    assert got.keys() == expected.keys()
    for k in got:
        assert got[k] == pytest.approx(expected[k], abs=1e-12), k
    assert report["summary"]["mean_iou"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert 0.0 < report["summary"]["mean_iou"] < 1.0  # not a degenerate all-or-nothing model
    assert report["weights"] == "fcn8s_300_no_aug" and report["input_size"] == 32


def test_precision_is_measured_as_asked_and_refused_in_one_line(slim_run, tmp_path):
    """PRECISION reaches the network: the scores are those of a bfloat16
    FaceSegmenter (where the CPU has native bfloat16), the report says which
    precision and device; fp16 on the CPU is one error line naming the key."""
    from face_segmentation_pytorch.pipeline.precision import _cpu_has_native_bf16

    weights, _ = slim_run
    # Its own images and masks (another test adds a ground truth without an image to the shared ones).
    data = make_synthetic_dataset(tmp_path / "data", 4, size=32, seed=11)
    common = [
        "WEIGHTS=fcn8s_300_no_aug",
        f"WEIGHTS_FILE={weights}",
        "INPUT_SIZE=32",
        f"IMGS_DIR={data / 'images'}",
        f"GT_DIR={data / 'masks'}",
        "DEVICE=cpu",
    ]
    refused = run_evaluate(*common, "PRECISION=fp16", f"OUT_DIR={tmp_path / 'fp16'}")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: PRECISION=fp16: precision fp16 is refused on the CPU"), refused.stderr
    assert not (tmp_path / "fp16").exists()
    if not _cpu_has_native_bf16():
        return  # bf16 is then refused as fp16 is (test_precision.py)
    proc = run_evaluate(*common, "PRECISION=bf16", f"OUT_DIR={tmp_path / 'bf16'}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bf16" / "eval.json").read_text())
    assert report["precision"] == "bf16" and report["device"] == "cpu"
    seg = fsp.FaceSegmenter("fcn8s_300_no_aug", weights_file=weights, input_size=32, device="cpu", precision="bf16")
    exact = fsp.FaceSegmenter("fcn8s_300_no_aug", weights_file=weights, input_size=32, device="cpu")
    moved = 0.0
    images = {p.stem: p for p in (data / "images").iterdir()}
    assert len(report["per_image"]) == len(images)
    for r in report["per_image"]:
        path = images[r["name"]]
        got = seg.segment(path)
        gt = np.asarray(Image.open(data / "masks" / path.name)) > 0
        assert r["iou"] == pytest.approx((got.mask & gt).sum() / ((got.mask | gt).sum() + 1e-6), abs=1e-12)
        moved = max(moved, float(np.abs(got.pmap - exact.segment(path).pmap).max()))
    assert moved > 0  # the scored network ran in bfloat16, not float32


def test_train_then_evaluate_agree(tmp_path, slim_weights_dir):
    """The training run's validation mean IoU (metrics.jsonl) is what evaluate
    reports for best.pt on the same validation images: one IoU rule, one
    preprocessing, whether training or segmenting. (Fine-tuned from weights
    whose maps vary, so the masks are neither empty nor full.)"""
    # The seed's layout: img_train.npy / mask_train.npy, img_test.npy / mask_test.npy.
    data = make_synthetic_dataset(tmp_path / "data", 8, size=32, seed=6, val=8, layout="numpy")
    result = fsp.train(
        data,
        tmp_path / "run",
        weights="fcn8s_500",
        init="pretrained",
        model_params_dir=slim_weights_dir,
        input_size=32,
        epochs=1,
        batch_size=4,
        lr=1e-4,
        threads=1,
        progress=False,
        device="cpu",  # training's validation and evaluate both fp32 on the CPU (no TF32, same kernels)
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_mean_iou"])
    assert 0.02 < best["val_mean_iou"] < 0.98 and best["val_mean_iou"] != best["val_dataset_iou"]
    proc = run_evaluate(
        "WEIGHTS=fcn8s_500",
        f"WEIGHTS_FILE={result.best_path}",
        "INPUT_SIZE=32",
        f"DATA_DIR={data}",
        "PROGRESS=false",
        "DEVICE=cpu",
        "OUT=-",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["part"] == "img_test.npy" and doc["per_image"][0]["name"] == "img_test[0]"
    summary = doc["summary"]
    assert summary["images"] == 8
    assert summary["mean_iou"] == pytest.approx(best["val_mean_iou"], abs=1e-3)
    assert summary["dataset_iou"] == pytest.approx(best["val_dataset_iou"], abs=1e-3)
