"""DILATE and FEATHER through the command line, checked against rules computed here.

The expected masks come from brute force on small images: a pixel is in the
grown mask when a mask pixel's centre lies within N pixels of its centre; the
feathered alpha is clip(0.5 + s / (2 R), 0, 1) with s the signed distance to the
edge (inside: distance to the nearest background pixel minus 0.5; outside: 0.5
minus the distance to the nearest mask pixel), as the README states.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch", *args], capture_output=True, text=True, timeout=300
    )


def _nearest(src: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For every pixel, the Euclidean distance to the nearest pixel of ``targets`` (inf if none)."""
    ty, tx = np.nonzero(targets)
    if len(ty) == 0:
        return np.full(src.shape, np.inf)
    yy, xx = np.mgrid[0 : src.shape[0], 0 : src.shape[1]]
    d2 = (yy[..., None] - ty) ** 2 + (xx[..., None] - tx) ** 2
    return np.sqrt(d2.min(axis=-1))


def grown(mask: np.ndarray, n: int) -> np.ndarray:
    if n >= 0:
        return _nearest(mask, mask) <= n
    # Shrinking: pixels outside the image do not count as background.
    return ~(_nearest(mask, ~mask) <= -n)


def feathered(mask: np.ndarray, r: int) -> np.ndarray:
    s = np.where(mask, _nearest(mask, ~mask) - 0.5, 0.5 - _nearest(mask, mask))
    return np.clip(0.5 + s / (2 * r), 0, 1)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:48]
    blob = np.exp(-(((yy - 20) / 9.0) ** 2 + ((xx - 22) / 11.0) ** 2))
    rgb = np.stack([220 * blob + 20, 90 + 60 * blob, 200 - 150 * blob], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "face.png")
    return folder


def test_dilate_and_feather_equal_the_stated_rules(images, slim_weights_dir, tmp_path):
    # Every run on the CPU: masks of separate processes are compared pixel for pixel.
    base_dir, args = (
        tmp_path / "base",
        [f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", "MASK_THRESHOLD=0.5", "DEVICE=cpu"],
    )
    assert run_cli(*args, f"OUT_DIR={base_dir}").returncode == 0
    base = _png(base_dir / "face__mask.png") > 0
    assert 20 < base.sum() < base.size - 20, "the slim net's mask must have an edge to move"
    for n in (3, -3, 2):
        out = tmp_path / f"d{n}"
        proc = run_cli(*args, f"OUT_DIR={out}", f"DILATE={n}")
        assert proc.returncode == 0, proc.stderr
        got = _png(out / "face__mask.png")
        assert set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got > 0, grown(base, n))
    out = tmp_path / "f4"
    proc = run_cli(*args, f"OUT_DIR={out}", "FEATHER=4", "CUTOUT=true", "OVERLAY=true")
    assert proc.returncode == 0, proc.stderr
    alpha = _png(out / "face__mask.png").astype(int)
    want = np.floor(feathered(base, 4) * 255 + 0.5).astype(int)
    assert np.abs(alpha - want).max() <= 1
    assert 0 < ((alpha > 0) & (alpha < 255)).sum()  # a soft edge, not 0/255
    cut = _png(out / "face__cutout.png")
    np.testing.assert_array_equal(cut[..., 3].astype(int), alpha)
    img = _png(images / "face.png").astype(float)
    a = alpha[..., None] / 255.0 * 0.5  # the overlay's red at half opacity, weighted by the alpha
    expected_overlay = img * (1 - a) + np.array([255.0, 0, 0]) * a
    assert np.abs(_png(out / "face__overlay.png").astype(float) - expected_overlay).max() <= 1.01
    # Resumable like every other output; no temporary file left.
    again = run_cli(*args, f"OUT_DIR={out}", "FEATHER=4", "CUTOUT=true", "OVERLAY=true")
    assert "0 images done, 0 failed, 1 skipped" in again.stderr or "nothing to do" in again.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temporary files are .<name>.partial


def test_with_boxes_each_face_is_grown_on_its_own(images, slim_weights_dir, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"face.png": [[4, 6, 20, 20], [26, 14, 18, 20]]}))
    # Every run on the CPU: masks of separate processes are compared pixel for pixel.
    args = [
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={images}",
        "MASK_THRESHOLD=0.5",
        f"BOXES={boxes}",
        "PER_FACE=true",
        "DEVICE=cpu",
    ]
    base_dir, out = tmp_path / "base", tmp_path / "grown"
    assert run_cli(*args, f"OUT_DIR={base_dir}").returncode == 0
    proc = run_cli(*args, f"OUT_DIR={out}", "DILATE=3")
    assert proc.returncode == 0, proc.stderr
    union = np.zeros((40, 48), bool)
    for k in range(2):
        face = _png(base_dir / f"face__face{k}__mask.png") > 0
        want = grown(face, 3)
        np.testing.assert_array_equal(_png(out / f"face__face{k}__mask.png") > 0, want)
        union |= want
    np.testing.assert_array_equal(_png(out / "face__mask.png") > 0, union)
    x, y, w, h = 4, 6, 20, 20
    face0 = _png(out / "face__face0__mask.png") > 0
    inside = np.zeros_like(face0)
    inside[y : y + h, x : x + w] = True
    if (_png(base_dir / "face__face0__mask.png") > 0)[y : y + h, x : x + w].any():
        assert (face0 & ~inside).any(), "a grown face may pass its crop box"


@pytest.mark.parametrize(
    "args, message",
    [
        (["DILATE=3"], "DILATE=3 is invalid: works on masks: add MASK_THRESHOLD=0.5"),
        (["FEATHER=2"], "FEATHER=2 is invalid: works on masks"),
        (["MASK_THRESHOLD=0.5", "FEATHER=-1"], "FEATHER=-1 is invalid"),
        (["MASK_THRESHOLD=0.5", "DILATE=1.5"], "DILATE=1.5 is invalid"),
    ],
)
def test_mistakes_are_one_line_errors(images, slim_weights_dir, args, message):
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", *args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1


def test_segmenter_keywords(slim_weights_dir, images):
    import face_segmentation_pytorch as fsp

    plain = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=0.5).segment(images / "face.png")
    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=0.5, dilate=2, feather=3)
    got = seg.segment(images / "face.png")
    np.testing.assert_array_equal(got.mask, grown(plain.mask, 2))
    np.testing.assert_allclose(got.alpha, feathered(got.mask, 3), atol=1e-5)
    with pytest.raises(ValueError, match="give a threshold"):
        fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None, feather=2)
