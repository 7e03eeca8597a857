"""Preprocessing as the authors' tool does it, and images of every kind users have."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from face_segmentation_pytorch import BGR_MEAN, FaceSegmentationNet, ImageReadError, load_image
from face_segmentation_pytorch.pipeline.imageio import find_images, save_png_atomic
from face_segmentation_pytorch.pipeline.preprocess import image_to_input, resize_bicubic_uint8, resize_pmap


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "src, dst", [((37, 53), (500, 500)), ((640, 480), (500, 500)), ((500, 500), (300, 300)), ((1, 1), (500, 500))]
)
def test_bicubic_resize_matches_opencv_inter_cubic(src, dst):
    import cv2

    bgr = _rgb(*src)[:, :, ::-1].copy()
    ref = cv2.resize(bgr, (dst[1], dst[0]), interpolation=cv2.INTER_CUBIC)
    ours = resize_bicubic_uint8(torch.from_numpy(bgr).permute(2, 0, 1), dst).permute(1, 2, 0).numpy()
    diff = np.abs(ours - ref.astype(np.float32))
    # OpenCV works in fixed point: at most one grey level apart, rarely.
    assert diff.max() <= 1.0
    assert (diff > 0).mean() < 0.02


def test_image_to_input_is_bgr_minus_mean_without_scaling():
    rgb = _rgb(4, 5)
    x = image_to_input(rgb)
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    for c_bgr, c_rgb in enumerate((2, 1, 0)):
        np.testing.assert_allclose(x[c_bgr].numpy(), rgb[:, :, c_rgb] - np.float32(BGR_MEAN[c_bgr]), rtol=0, atol=1e-4)


def test_pre_normalize_stretches_the_range():
    rgb = np.full((6, 6, 3), 100, np.uint8)
    rgb[0, 0] = 50
    rgb[5, 5] = 150
    x = image_to_input(rgb, pre_normalize=True, mean_bgr=(0, 0, 0))
    assert float(x.min()) == 0.0 and float(x.max()) == 255.0
    flat = image_to_input(np.full((3, 3, 3), 7, np.uint8), pre_normalize=True, mean_bgr=(0, 0, 0))
    assert torch.all(flat == 7)
    # Off by default: the original tool does not stretch.
    assert float(image_to_input(rgb, mean_bgr=(0, 0, 0)).max()) == 150.0


def test_model_img_to_input_keeps_seed_signature_and_resizes_on_request():
    model = FaceSegmentationNet(2, channel_divisor=16, input_size=300)
    img = Image.fromarray(_rgb(40, 60))
    assert model.img_to_input(img, pre_normalize=False).shape == (3, 40, 60)
    assert model.img_to_input(img, resize=True).shape == (3, 300, 300)
    assert model.img_to_input(img, resize=(32, 48)).shape == (3, 32, 48)


def test_resize_pmap_bilinear_back_to_image_size():
    p = torch.rand(50, 50)
    out = resize_pmap(p, (17, 91))
    assert out.shape == (17, 91) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert resize_pmap(p, (50, 50)) is p
    const = resize_pmap(torch.full((8, 8), 0.25), (3, 100))
    assert torch.allclose(const, torch.tensor(0.25))


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_image_modes_become_rgb(tmp_path):
    rgb = Image.fromarray(_rgb(20, 30))
    cases = {
        "grey.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "la.png": rgb.convert("LA"),
        "palette.png": rgb.convert("P"),
        "bilevel.png": rgb.convert("1"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "cmyk.tif": rgb.convert("CMYK"),
        "rgb.webp": rgb,
        "rgb.bmp": rgb,
    }
    for name, img in cases.items():
        out = load_image(_save(img, tmp_path / name))
        assert out.mode == "RGB" and out.size == (30, 20), name


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent
    out = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    assert np.asarray(out)[0, 0].tolist() == [200, 0, 0]


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    arr = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "g16.png")))
    assert out.dtype == np.uint8 and out[..., 0].min() == 0 and out[..., 0].max() == 255
    expected = np.floor(arr.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)


@pytest.mark.parametrize("bright", [None, 300, 60000], ids=["alone", "with-300", "with-60000"])
def test_sixteen_bit_brightness_does_not_depend_on_the_brightest_pixel(tmp_path, bright):
    """A 200 in a 16-bit file is 200/65535 of full scale, whatever else the file holds."""
    arr = np.array([[0, 200], [200, 0]], np.uint16)
    if bright is not None:
        arr[1, 1] = bright
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "g.png")))
    assert out[0, 1, 0] == out[1, 0, 0] == round(200 * 255 / 65535) == 1
    assert out[0, 0, 0] == 0


def test_float_grey_is_scaled_by_its_mode_not_its_values(tmp_path):
    low = np.full((2, 2), 0.25, np.float32)
    high = low.copy()
    high[0, 0] = 0.9
    a = np.asarray(load_image(_save(Image.fromarray(low, "F"), tmp_path / "lo.tif")))
    b = np.asarray(load_image(_save(Image.fromarray(high, "F"), tmp_path / "hi.tif")))
    assert a[1, 1, 0] == b[1, 1, 0] == 64  # round(0.25 * 255)
    big = np.full((2, 2), 300.0, np.float32)
    assert np.asarray(load_image(_save(Image.fromarray(big, "F"), tmp_path / "big.tif")))[0, 0, 0] == 255


def test_float_tiff_in_unit_range(tmp_path):
    arr = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    out = np.asarray(load_image(_save(Image.fromarray(arr, "F"), tmp_path / "f.tif")))
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(10, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_image(path).size == (10, 30)


def test_one_pixel_image(tmp_path):
    out = load_image(_save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "px.png"))
    assert out.size == (1, 1)


def test_unreadable_images_raise_one_line_errors(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    good = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(good, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.getvalue()[:200])
    for name in ("text.jpg", "cut.jpg", "missing.png"):
        with pytest.raises(ImageReadError) as e:
            load_image(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="decompression-bomb.*MAX_IMAGE_PIXELS"):
        load_image(path)


def test_find_images_skips_outputs_and_non_images(tmp_path):
    for name in ("a.jpg", "b.PNG", "c.txt", "a.jpg__heatmap.png", "b__mask.png", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tif").write_bytes(b"x")
    images, skipped = find_images(tmp_path)
    assert [p.name for p in images] == ["a.jpg", "b.PNG"] and skipped == 3
    images, _ = find_images(tmp_path, recursive=True)
    assert [p.name for p in images] == ["a.jpg", "b.PNG", "d.tif"]


def test_atomic_writes_leave_no_partial_file(tmp_path):
    from face_segmentation_pytorch.pipeline.atomic import save_atomic

    save_png_atomic(np.zeros((3, 3), np.uint8), tmp_path / "ok.png")
    assert Image.open(tmp_path / "ok.png").size == (3, 3)

    def half_then_fail(f):
        f.write(b"\x89PNG half of a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_atomic(tmp_path / "bad.png", half_then_fail)
    # An existing output is not touched by a failed rewrite either.
    with pytest.raises(OSError):
        save_atomic(tmp_path / "ok.png", half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]
    assert Image.open(tmp_path / "ok.png").size == (3, 3)


def test_signed_sixteen_bit_tiff_spans_its_own_range(tmp_path):
    """A signed 16-bit TIFF (SampleFormat 2) holds 0..32767 above zero: full scale is 32767."""
    import tifffile  # requirements-test.txt: Pillow cannot write signed 16-bit TIFFs

    path = tmp_path / "s16.tif"
    tifffile.imwrite(path, np.array([[0, 200], [-5, 32767]], np.int16))
    out = np.asarray(load_image(path))[..., 0]
    assert out.tolist() == [[0, round(200 * 255 / 32767)], [0, 255]]
