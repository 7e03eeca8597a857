"""The package's fixed numbers and conversions against expectations written here.

Each expected value is computed in this file from the published rule, never
by calling the package function under test:

* The fixed layers of the deploy net: the FCN bilinear upsampling kernel
  (factor f, size k = 2f - f % 2, centre f - 1 for odd k else f - 0.5,
  ``w[i, j] = (1 - |i - c| / f) (1 - |j - c| / f)``, channel c -> c only) for
  ``upscore2`` / ``upscore_pool4`` (4x4, stride 2) and ``upscore8`` (16x16,
  stride 8), and the Scale constants 0.01 (pool4) and 0.0001 (pool3), as the
  package makes them: default initialisation, ``set_num_classes``, the
  converter's defaults for files without those layers, ``from_state_dict``.
  The deconvolutions are also run and compared with a transposed convolution
  written here in NumPy. Values are small dyadic fractions: compared to fp32
  rounding (rtol 1e-6).
* The input: bicubic resize against ``cv2.resize(..., INTER_CUBIC)`` (the
  authors' tool) on smooth images with noise and on scikit-image's
  astronaut. OpenCV resizes in fixed point, so a pixel may differ by one grey
  level; measured, at most 1 level and 99.986% .. 99.997% of the values
  equal on these images; asserted: at most 1 level, at least 99.5% equal. The mean: B 104.00699, G 116.66877, R 122.67892,
  written here, BGR order; compared to 1e-4 (fp32 of values up to 255).
* The map's resize back to the image: bilinear with half-pixel centres
  (``align_corners=False``, sources below 0 clamped to 0), clamped to 0..1,
  as the README states, with a bilinear written here in NumPy (float64).
  PyTorch computes the source coordinates in fp32, so the error grows with
  the map's size (about coordinate x 6e-8 x the map's slope): measured
  4e-6 for the <= 50 pixel maps here (2e-5 for 500 pixel maps); bound
  ``PMAP_TOL`` = 2e-5. Another rule (align_corners=True, antialiasing,
  nearest) differs by 0.18 or more on these maps.
* Image modes through ``load_image``: the project's rule, scale by what the
  mode / bit depth says and never by the content: 8-bit modes unchanged;
  alpha dropped (RGBA -> RGB, LA -> L), not composited; CMYK by Pillow's own
  ``convert("RGB")``; palette by its colours; 16-bit grey -> round(v / 257);
  32-bit signed integer grey (mode I from TIFF) -> round(max(v, 0) * 255 /
  (2**31 - 1)); 32-bit float grey -> round(clip(v, 0, 1) * 255); grey
  replicated to R = G = B. Exact equality. (A mode I image opened from a
  16-bit PNG, which older Pillow versions produce, cannot be made with the
  installed Pillow, which opens those as I;16; it is not tested here.)
* A last section pins behaviour that a mutation run (mutmut 3, issue 17)
  showed no test pinned: saturation of bicubic overshoot, input validation,
  ties between face and background, threshold and shape checks, the
  constructor's defaults, strict loading, legal protobuf encodings Caffe
  itself does not write, every 16-bit value and the 32-bit rounding
  boundaries, NaN in float images, hooks under no_grad.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from caffe_writer import random_layers, write_caffemodel
from PIL import Image

from face_segmentation_pytorch.formats.caffe import convert_caffemodel
from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet
from face_segmentation_pytorch.pipeline.imageio import load_image
from face_segmentation_pytorch.pipeline.preprocess import image_to_input, resize_bicubic_uint8, resize_pmap

#: The training mean of the authors' tool, BGR order.
MEAN_B, MEAN_G, MEAN_R = 104.00699, 116.66877, 122.67892

FIXED = ("upscore2", "upscore_pool4", "upscore8", "scale_pool4", "scale_pool3")
#: (upsampling factor, stride) of each fixed deconvolution in the prototxt.
DECONV_FACTOR = {"upscore2": 2, "upscore_pool4": 2, "upscore8": 8}
SCALE = {"scale_pool4": 0.01, "scale_pool3": 0.0001}
#: See the module docstring.
PMAP_TOL = 2e-5


# --------------------------------------------------------------------------
# Fixed layers


def fcn_bilinear_2d(factor: int) -> np.ndarray:
    k = 2 * factor - factor % 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    i = np.arange(k, dtype=np.float64)
    one = 1 - np.abs(i - center) / factor
    return one[:, None] * one[None, :]


def fcn_weight(channels: int, factor: int) -> np.ndarray:
    k2 = fcn_bilinear_2d(factor)
    w = np.zeros((channels, channels, *k2.shape))
    for c in range(channels):
        w[c, c] = k2
    return w


def test_the_formula_itself():
    # The 4x4 kernel written out: 1-d taps 1/4, 3/4, 3/4, 1/4.
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_array_equal(fcn_bilinear_2d(2), np.outer(taps, taps))
    # 16x16: taps (2i + 1) / 16 rising then falling; each output of a stride-8
    # deconvolution gets weights summing to 1 (partition of unity).
    taps8 = np.r_[np.arange(1, 16, 2), np.arange(15, 0, -2)] / 16
    np.testing.assert_array_equal(fcn_bilinear_2d(8), np.outer(taps8, taps8))
    assert np.allclose(taps8[:8] + taps8[8:], 1)


def _check_fixed(model_or_state, num_classes: int):
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    for name, factor in DECONV_FACTOR.items():
        w = state[f"{name}.weight"]
        assert w.dtype == torch.float32, name
        np.testing.assert_allclose(
            w.detach().cpu().numpy(), fcn_weight(num_classes, factor), rtol=1e-6, atol=0, err_msg=name
        )
    for name, value in SCALE.items():
        w = state[f"{name}.weight"].detach().cpu().numpy()
        assert w.dtype == np.float32 and w.ndim == 1, name
        np.testing.assert_allclose(w, value, rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("num_classes", [21, 2, 3])
def test_default_fixed_layers(num_classes):
    model = FaceSegmentationNet(num_classes, channel_divisor=16)
    _check_fixed(model, num_classes)
    assert model.scale_pool4.weight.shape == (512 // 16,)
    assert model.scale_pool3.weight.shape == (256 // 16,)
    for name, f in DECONV_FACTOR.items():
        m = getattr(model, name)
        assert m.stride == (f, f) and m.padding == (0, 0) and m.output_padding == (0, 0)
        assert m.bias is None and m.groups == 1 and m.dilation == (1, 1)
    for name in FIXED:
        assert not getattr(model, name).weight.requires_grad


def test_fixed_layers_after_set_num_classes():
    model = FaceSegmentationNet(21, channel_divisor=16)
    model.set_num_classes(2)
    _check_fixed(model, 2)
    model.set_num_classes(5)
    _check_fixed(model, 5)


@pytest.mark.parametrize("num_classes", [21, 2])
def test_deconvolutions_upsample_as_the_fcn_formula(num_classes):
    """Run each fixed deconvolution and compare with a transposed convolution
    written here: ``out[c, s*i + a, s*j + b] += x[c, i, j] * K[a, b]``."""
    model = FaceSegmentationNet(num_classes, channel_divisor=16)
    x = np.random.default_rng(num_classes).normal(size=(2, num_classes, 5, 7))
    for name, f in DECONV_FACTOR.items():
        k2 = fcn_bilinear_2d(f)
        k = k2.shape[0]
        n, c, h, w = x.shape
        exp = np.zeros((n, c, (h - 1) * f + k, (w - 1) * f + k))
        for i in range(h):
            for j in range(w):
                exp[:, :, f * i : f * i + k, f * j : f * j + k] += x[:, :, i, j, None, None] * k2
        with torch.no_grad():
            got = getattr(model, name)(torch.from_numpy(x).float()).numpy()
        assert got.shape == exp.shape, name
        np.testing.assert_allclose(got, exp, rtol=0, atol=1e-5 * np.abs(exp).max(), err_msg=name)


def test_scale_layers_multiply_by_their_constants():
    model = FaceSegmentationNet(21, channel_divisor=16)
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 300, size=(1, 32, 3, 4)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(model.scale_pool4(x).numpy(), x.numpy() * 0.01, rtol=1e-6)
        np.testing.assert_allclose(model.scale_pool3(x[:, :16]).numpy(), x[:, :16].numpy() * 0.0001, rtol=1e-6)


def _learned_only(num_classes: int) -> dict[str, list[np.ndarray]]:
    layers = random_layers(num_classes, 16, seed=4, fixed="random")
    return {k: v for k, v in layers.items() if k not in FIXED}


@pytest.mark.parametrize("num_classes", [21, 2])
def test_converter_fills_missing_fixed_layers_with_the_deploy_values(tmp_path, num_classes):
    path = write_caffemodel(tmp_path / "m.caffemodel", _learned_only(num_classes))
    state, report = convert_caffemodel(path)
    assert sorted(report.defaults_filled) == sorted(FIXED)
    _check_fixed(dict(state), num_classes)
    # from_state_dict builds on the meta device and adopts the tensors.
    model = FaceSegmentationNet.from_state_dict(state)
    assert model.num_classes == num_classes and model.channel_divisor == 16
    _check_fixed(model, num_classes)


def test_v1_caffemodel_without_scale_layers_gets_the_constants(tmp_path):
    # V1 has no Scale type: the writer leaves them out; deconvolutions are in the file.
    layers = random_layers(21, 16, seed=5, fixed="random")
    state, report = convert_caffemodel(write_caffemodel(tmp_path / "v1.caffemodel", layers, v1=True))
    assert sorted(report.defaults_filled) == ["scale_pool3", "scale_pool4"]
    for name, value in SCALE.items():
        np.testing.assert_allclose(state[f"{name}.weight"].numpy(), value, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(state["upscore8.weight"].numpy(), layers["upscore8"][0])


# --------------------------------------------------------------------------
# Input resizing and mean


def _realish(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients, a few soft blobs and some sensor-like noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.empty((h, w, 3))
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 90 * np.sin(3 * a * xx + 2 * b * yy + 6 * p)
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            img[..., c] += rng.uniform(-60, 60) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


IMAGES = {
    "smooth_123x217": lambda: _realish(123, 217, 0),
    "smooth_640x480": lambda: _realish(640, 480, 1),
    "astronaut_512": _astronaut,
}


@pytest.mark.parametrize(
    "dst", [500, (300, 200), (333, 777)], ids=lambda d: f"{d}x{d}" if isinstance(d, int) else f"{d[0]}x{d[1]}"
)
@pytest.mark.parametrize("image", list(IMAGES))
def test_input_resize_matches_opencv_inter_cubic(image, dst):
    import cv2

    rgb = IMAGES[image]()
    h, w = (dst, dst) if isinstance(dst, int) else dst
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    ref = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float64)  # (h, w, 3) BGR
    mean = np.array([MEAN_B, MEAN_G, MEAN_R])

    x = image_to_input(rgb, size=dst).numpy().astype(np.float64)  # (3, h, w), BGR - mean
    assert x.shape == (3, h, w)
    pixels = x.transpose(1, 2, 0) + mean
    # Whole grey levels: the resize is rounded (OpenCV returns uint8) before the mean.
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-4)
    diff = np.abs(np.rint(pixels) - ref)
    equal = float((diff == 0).mean())
    print(f"[resize] {image} -> {h}x{w}: max diff {diff.max():.0f}, {equal:.5f} equal")
    assert diff.max() <= 1
    assert equal >= 0.995

    chw = torch.from_numpy(bgr.transpose(2, 0, 1).copy())
    direct = resize_bicubic_uint8(chw, (h, w)).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(direct, np.rint(pixels))


def test_bicubic_resize_keeps_batches_and_native_size():
    rgb = _realish(40, 30, 3)
    chw = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    same = resize_bicubic_uint8(chw, (40, 30))
    assert same.dtype == torch.float32
    np.testing.assert_array_equal(same.numpy(), rgb.transpose(2, 0, 1))
    batch = resize_bicubic_uint8(torch.stack([chw, chw.flip(-1)]), 64)
    assert batch.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(batch[0].numpy(), resize_bicubic_uint8(chw, 64).numpy())


def test_mean_is_subtracted_in_bgr_order():
    rgb = _realish(37, 53, 2)
    x = image_to_input(rgb).numpy().astype(np.float64)
    expected = np.stack([rgb[..., 2] - MEAN_B, rgb[..., 1] - MEAN_G, rgb[..., 0] - MEAN_R])
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-4)
    # Subtracted: what was taken from each channel is the mean, per channel.
    taken = np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0]]) - x
    np.testing.assert_allclose(taken.mean(axis=(1, 2)), [MEAN_B, MEAN_G, MEAN_R], atol=1e-4)
    # The model and every published FCN-8s weights entry use the same mean.
    model = FaceSegmentationNet(21, channel_divisor=16)
    np.testing.assert_allclose(model.img_to_input(Image.fromarray(rgb)).numpy(), expected, atol=1e-4)
    from face_segmentation_pytorch.pipeline.weights import WEIGHTS

    fcn8s = [e for e in WEIGHTS.values() if getattr(e, "family", "fcn8s") == "fcn8s"]
    assert len(fcn8s) >= 3
    for entry in fcn8s:
        np.testing.assert_allclose(entry.mean_bgr, [MEAN_B, MEAN_G, MEAN_R], rtol=0, atol=1e-9, err_msg=entry.name)


# --------------------------------------------------------------------------
# The probability map back to the image


def _axis(n_in: int, n_out: int):
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel-centre bilinear over the last two axes, in float64."""
    r0, r1, ry = _axis(a.shape[-2], h)
    c0, c1, cx = _axis(a.shape[-1], w)
    rows = a[..., r0, :] * (1 - ry)[:, None] + a[..., r1, :] * ry[:, None]
    return rows[..., c0] * (1 - cx) + rows[..., c1] * cx


@pytest.mark.parametrize(
    "src, dst",
    [((50, 50), (17, 91)), ((13, 7), (100, 40)), ((9, 11), (9, 30)), ((1, 1), (4, 3)), ((8, 8), (500, 3))],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_pmap_resize_is_half_pixel_bilinear(src, dst):
    p = np.random.default_rng(sum(src)).uniform(0, 1, size=src).astype(np.float32)
    out = resize_pmap(torch.from_numpy(p), dst).numpy()
    assert out.shape == dst and out.dtype == np.float32
    np.testing.assert_allclose(out, bilinear(p.astype(np.float64), *dst), rtol=0, atol=PMAP_TOL)


def test_pmap_resize_batches_and_clamps():
    p = np.random.default_rng(7).uniform(-0.5, 1.5, size=(2, 6, 9)).astype(np.float32)
    out = resize_pmap(torch.from_numpy(p), (13, 4)).numpy()
    assert out.shape == (2, 13, 4)
    np.testing.assert_allclose(out, np.clip(bilinear(p.astype(np.float64), 13, 4), 0, 1), rtol=0, atol=PMAP_TOL)
    assert out.min() == 0.0 and out.max() == 1.0
    same = torch.rand(5, 6)
    assert torch.equal(resize_pmap(same, (5, 6)), same)


def test_pipeline_brings_each_map_back_bilinearly():
    from face_segmentation_pytorch.pipeline.inference import run_inputs

    rng = np.random.default_rng(8)
    maps = torch.from_numpy(rng.uniform(0, 1, size=(2, 16, 12)).astype(np.float32))
    inputs = [torch.zeros(3, 16, 12), torch.zeros(3, 16, 12)]
    sizes = [(37, 23), (16, 12)]
    out = run_inputs(lambda batch: maps[: len(batch)], inputs, sizes)
    for o, m, s in zip(out, maps.numpy(), sizes):
        assert tuple(o.shape) == s
        np.testing.assert_allclose(o.numpy(), bilinear(m.astype(np.float64), *s), rtol=0, atol=PMAP_TOL)


def test_predict_pmaps_feeds_the_authors_input_and_resizes_back():
    """The whole pipeline around the network: bicubic to input_size, BGR minus
    the mean in, and the map bilinearly back to the image's size."""
    import cv2

    from face_segmentation_pytorch.pipeline.inference import predict_pmaps

    seen = []
    fixed_map = torch.from_numpy(np.random.default_rng(9).uniform(0, 1, (1, 48, 48)).astype(np.float32))

    class Stub(FaceSegmentationNet):
        def forward(self, x, as_pmap=False, face_channel="default"):
            seen.append(x.clone())
            return fixed_map.expand(len(x), -1, -1)

    model = Stub(2, channel_divisor=16, input_size=48).eval()
    rgb = _realish(61, 35, 4)
    (out,) = predict_pmaps(model, [rgb])
    bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (48, 48), interpolation=cv2.INTER_CUBIC)
    expected_in = bgr.transpose(2, 0, 1) - np.array([MEAN_B, MEAN_G, MEAN_R])[:, None, None]
    assert np.abs(seen[0][0].numpy() - expected_in).max() <= 1 + 1e-4
    np.testing.assert_allclose(
        out.numpy(), bilinear(fixed_map[0].numpy().astype(np.float64), 61, 35), rtol=0, atol=PMAP_TOL
    )


# --------------------------------------------------------------------------
# Image modes


def _grey_rgb(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.uint8)
    return np.stack([v, v, v], axis=-1)


def _load(path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8
    return arr


def _grey8(h=6, w=7, seed=0, top=255) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top + 1, size=(h, w), dtype=np.uint8)


def test_eight_bit_grey_is_unchanged(tmp_path):
    for top in (255, 100):  # no stretch of a dark image
        g = _grey8(top=top)
        Image.fromarray(g, "L").save(tmp_path / "l.png")
        np.testing.assert_array_equal(_load(tmp_path / "l.png"), _grey_rgb(g))


def test_rgb_and_rgba_keep_their_colours_alpha_dropped(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(5, 8, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0  # fully transparent: colour kept, not composited onto anything
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(_load(tmp_path / "a.png"), rgba[..., :3])
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(_load(tmp_path / "rgb.png"), rgba[..., :3])


def test_la_drops_alpha(tmp_path):
    g = _grey8(seed=2)
    alpha = _grey8(seed=3)
    alpha[0] = 0
    Image.fromarray(np.stack([g, alpha], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(_load(tmp_path / "la.png"), _grey_rgb(g))


def test_palette_gives_its_colours(tmp_path):
    rng = np.random.default_rng(4)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette.ravel().tolist())
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(_load(tmp_path / "p.png"), palette[idx])
    # With a transparent palette entry the colour is still the palette's.
    img.save(tmp_path / "pt.png", transparency=int(idx[0, 0]))
    np.testing.assert_array_equal(_load(tmp_path / "pt.png"), palette[idx])


def test_bilevel_is_black_and_white(tmp_path):
    bits = np.random.default_rng(5).integers(0, 2, size=(7, 9)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(_load(tmp_path / "b.png"), _grey_rgb(bits * 255))


def test_cmyk_goes_through_pillows_conversion(tmp_path):
    cmyk = np.random.default_rng(6).integers(0, 256, size=(6, 10, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    expected = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB"))
    np.testing.assert_array_equal(_load(tmp_path / "c.tif"), expected)
    # Lossy JPEG: compare with Pillow's conversion of what the file decodes to.
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(_load(tmp_path / "c.jpg"), expected)


def _sixteen(v) -> np.ndarray:
    """16-bit grey to 8 bits by the bit depth: round(v * 255 / 65535)."""
    v = np.asarray(v, dtype=np.float64)
    return np.clip(np.floor(v * 255 / 65535 + 0.5), 0, 255).astype(np.uint8)


def _save_16(arr: np.ndarray, path, mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16))  # I;16, native little-endian
    else:
        img = Image.frombytes(mode, arr.shape[::-1], arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    img.save(path)


SIXTEEN = [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif")]


@pytest.mark.parametrize("mode, ext", SIXTEEN, ids=lambda v: v)
def test_sixteen_bit_grey_scales_by_its_depth(tmp_path, mode, ext):
    arr = np.random.default_rng(7).integers(0, 65536, size=(8, 9)).astype(np.uint16)
    arr[0, :4] = [0, 65535, 128, 129]  # 128 / 257 rounds down, 129 / 257 up
    path = tmp_path / f"g.{ext}"
    _save_16(arr, path, mode)
    with Image.open(path) as im:
        assert im.mode == mode  # the mode under test is what Pillow reads back
    out = _load(path)
    np.testing.assert_array_equal(out, _grey_rgb(_sixteen(arr)))
    assert out[0, :4, 0].tolist() == [0, 255, 0, 1]


@pytest.mark.parametrize("others", [[], [300], [60000], [65535]], ids=lambda v: f"with{v}")
def test_sixteen_bit_value_does_not_depend_on_other_pixels(tmp_path, others):
    """A 16-bit grey value 200 is 200/65535 of full scale: 8-bit 1, whatever
    else the image holds (the defect: 200 stayed 200 when the image's maximum
    was at most 255, and became 0 when another pixel was 300)."""
    arr = np.array([[0, 200, *others]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "g.png")
    out = _load(tmp_path / "g.png")
    assert out[0, 1].tolist() == [1, 1, 1]
    np.testing.assert_array_equal(out, _grey_rgb(_sixteen(arr)))


def _int32(v) -> np.ndarray:
    v = np.maximum(np.asarray(v, dtype=np.float64), 0)
    return np.clip(np.floor(v * 255 / (2**31 - 1) + 0.5), 0, 255).astype(np.uint8)


def test_thirty_two_bit_integer_grey(tmp_path):
    rng = np.random.default_rng(8)
    arr = rng.integers(-(2**31), 2**31, size=(6, 8), dtype=np.int64).astype(np.int32)
    arr[0, :5] = [0, -5, 2**31 - 1, 2**20, 2**24]
    Image.fromarray(arr).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    out = _load(tmp_path / "i.tif")
    np.testing.assert_array_equal(out, _grey_rgb(_int32(arr)))
    assert out[0, :5, 0].tolist() == [0, 0, 255, 0, 2]


@pytest.mark.parametrize("top", [2**20, 2**31 - 1])
def test_thirty_two_bit_value_does_not_depend_on_other_pixels(tmp_path, top):
    arr = np.array([[0, 2**24, 2**27, top]], np.int32)
    Image.fromarray(arr).save(tmp_path / "i.tif")
    out = _load(tmp_path / "i.tif")
    assert out[0, 1:3, 0].tolist() == [2, 16]


def _float(v) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float64), 0, 1)
    return np.floor(v * 255 + 0.5).astype(np.uint8)


def test_float_grey_is_zero_to_one(tmp_path):
    # Values away from rounding ties (k + 0.5) / 255, so float32 storage does not matter.
    k = np.random.default_rng(9).integers(0, 256, size=(5, 7))
    frac = np.random.default_rng(10).uniform(-0.4, 0.4, size=k.shape)
    arr = ((k + frac) / 255).astype(np.float32)
    arr[0, :6] = [0.0, 1.0, -0.25, 1.5, 0.5, 300.0]  # out of range values are clipped
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    out = _load(tmp_path / "f.tif")
    np.testing.assert_array_equal(out, _grey_rgb(_float(arr)))
    assert out[0, :6, 0].tolist() == [0, 255, 0, 255, 128, 255]


@pytest.mark.parametrize("others", [[], [2.0], [255.0]], ids=lambda v: f"with{v}")
def test_float_value_does_not_depend_on_other_pixels(tmp_path, others):
    arr = np.array([[0.0, 0.25, *others]], np.float32)
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    assert _load(tmp_path / "f.tif")[0, 1].tolist() == [64, 64, 64]


# --------------------------------------------------------------------------
# Found by the mutation run (issue 17): behaviour no other test pinned.


def test_bicubic_overshoot_saturates_like_opencv():
    """Keys' kernel overshoots at hard edges (about 10% of the step): the
    values are saturated to 0..255 as OpenCV's uint8 result is."""
    import cv2

    rgb = np.zeros((24, 20, 3), np.uint8)
    rgb[6:18, 5:15] = 255
    rgb[9:12, 8:11] = (255, 0, 128)
    for dst in [(61, 47), (13, 11)]:
        ref = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), dst[::-1], interpolation=cv2.INTER_CUBIC)
        pixels = image_to_input(rgb, size=dst, mean_bgr=(0, 0, 0)).numpy().transpose(1, 2, 0)
        assert pixels.max() == 255 and pixels.min() == 0
        assert np.abs(pixels - ref).max() <= 1
    # The unclamped resize does overshoot here, so the clamp is what is tested.
    raw = torch.nn.functional.interpolate(
        torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float()[None], size=(61, 47), mode="bicubic"
    )
    assert raw.max() > 256 and raw.min() < -1


def test_bicubic_resize_of_a_batch_of_one_keeps_its_batch_axis():
    chw = torch.from_numpy(_realish(10, 12, 5).transpose(2, 0, 1).copy())
    assert resize_bicubic_uint8(chw[None], (7, 9)).shape == (1, 3, 7, 9)
    assert resize_bicubic_uint8(chw, (7, 9)).shape == (3, 7, 9)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 5), np.uint8),
        np.zeros((4, 5, 4), np.uint8),
        np.zeros((4, 5, 3), np.float32),
        np.zeros((4, 5, 3), np.uint16),
    ],
    ids=["grey2d", "rgba", "float", "uint16"],
)
def test_image_to_input_refuses_arrays_that_are_not_uint8_rgb(arr):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB image"):
        image_to_input(arr)


def test_model_img_to_input_uses_its_own_mean_and_pre_normalize():
    rgb = np.full((3, 4, 3), 100, np.uint8)
    rgb[0, 0] = 50
    rgb[2, 3] = 150
    model = FaceSegmentationNet(2, channel_divisor=16, mean_bgr=(1.0, 2.0, 3.0))
    x = model.img_to_input(rgb).numpy()
    np.testing.assert_allclose(x[:, 1, 1], [99.0, 98.0, 97.0])
    stretched = model.img_to_input(rgb, pre_normalize=True).numpy()
    np.testing.assert_allclose(stretched[:, 0, 0], [-1.0, -2.0, -3.0])  # 50 -> 0
    np.testing.assert_allclose(stretched[:, 2, 3], [254.0, 253.0, 252.0])  # 150 -> 255


def test_a_tie_between_face_and_background_is_background():
    """Caffe's argmax takes the first of equal scores, channel 0 (background)."""
    from face_segmentation_pytorch.models.fcn8s import scores_to_mask, scores_to_pmap

    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 1, 0, 0] = 1.0  # face wins here only
    mask = scores_to_mask(scores).numpy()
    assert mask.tolist() == [[[True, False], [False, False]]]
    assert scores_to_mask(scores, face_channel=2).sum() == 0
    assert float(scores_to_pmap(scores)[0, 1, 1]) == 0.5


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_mask_threshold_must_be_strictly_inside_zero_one(threshold):
    from face_segmentation_pytorch.models.fcn8s import scores_to_mask

    with pytest.raises(ValueError, match="threshold"):
        scores_to_mask(torch.zeros(1, 2, 2, 2), threshold=threshold)


@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 1, 4, 4)])
def test_scores_must_be_four_dimensional_with_two_channels(shape):
    from face_segmentation_pytorch.models.fcn8s import scores_to_pmap

    with pytest.raises(ValueError, match="scores"):
        scores_to_pmap(torch.zeros(shape))


def test_set_num_classes_refuses_a_face_channel_it_would_drop_and_keeps_dtype():
    model = FaceSegmentationNet(21, channel_divisor=16, face_channel=2)
    with pytest.raises(ValueError, match="face_channel=2"):
        model.set_num_classes(2)  # channel 2 does not exist in a 2-class model
    model.set_num_classes(3)
    assert model.num_classes == 3
    model = FaceSegmentationNet(21, channel_divisor=16).double()
    model.set_num_classes(2)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint_bytes(num << 3 | 2) + _varint_bytes(len(payload)) + payload


def _fixed(num: int, wire: int, raw: bytes) -> bytes:
    return _varint_bytes(num << 3 | wire) + raw


def test_reader_takes_legal_encodings_caffe_does_not_write(tmp_path):
    """Unpacked double_data (field 8, wire type 1) and float data (field 5,
    wire type 5), unpacked shape dims, fixed-size fields ending exactly at
    the end of their message, and the other fields a real caffemodel's layer
    holds (bottom, top, a convolution_param), which are skipped."""
    from face_segmentation_pytorch.formats.caffe import read_caffemodel

    values = np.array([0.5, -1.25, 3.0, 1e-3, 7.0, -2.0])
    # Shape first, so the last fixed64 value ends exactly where the blob ends.
    blob8 = _field(7, _field(1, bytes([1, 1, 2, 3])))  # shape {dim: 1 1 2 3}, packed
    blob8 += b"".join(_fixed(8, 1, np.float64(v).tobytes()) for v in values)
    # Unpacked dims (one varint tag each), then unpacked floats to the end.
    blob5 = _field(7, b"".join(_fixed(1, 0, bytes([d])) for d in (3, 2)))
    blob5 += b"".join(_fixed(5, 5, np.float32(v).tobytes()) for v in values)
    layer = (
        _field(1, b"conv1_1")
        + _field(2, b"Convolution")
        + _field(3, b"data")
        + _field(4, b"conv1_1")
        + _field(106, _fixed(1, 0, bytes([64])))  # convolution_param {num_output: 64}
        + _field(7, blob8)
        + _field(7, blob5)
    )
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(_field(100, layer))
    (parsed,), field = read_caffemodel(path)
    assert (parsed.name, parsed.type, field, len(parsed.blobs)) == ("conv1_1", "Convolution", "layer", 2)
    np.testing.assert_array_equal(parsed.blobs[0], values.astype(np.float32).reshape(1, 1, 2, 3))
    np.testing.assert_array_equal(parsed.blobs[1], values.astype(np.float32).reshape(3, 2))


def test_v1_layer_types_are_named(tmp_path):
    from face_segmentation_pytorch.formats.caffe import read_caffemodel

    layers = random_layers(2, 16, seed=7)
    parsed, field = read_caffemodel(write_caffemodel(tmp_path / "v1.caffemodel", layers, v1=True))
    types = {layer.name: layer.type for layer in parsed}
    assert field == "layers"
    assert types["conv1_1"] == "Convolution" and types["upscore8"] == "Deconvolution"


def test_converter_is_strict_by_default_and_names_the_file(tmp_path):
    from face_segmentation_pytorch.errors import CaffeModelError
    from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict

    layers = random_layers(2, 16, seed=6)
    path = write_caffemodel(tmp_path / "extra.caffemodel", layers, extra_layers={"fc8": [np.ones(3, np.float32)]})
    with pytest.raises(CaffeModelError, match="fc8"):
        convert_caffemodel(path)
    assert "conv1_1.weight" in load_caffemodel_as_statedict(path, strict=False)
    bad = write_caffemodel(tmp_path / "bad.caffemodel", {k: v for k, v in layers.items() if k != "fc7"})
    with pytest.raises(CaffeModelError, match=r"bad\.caffemodel.*'fc7'"):
        convert_caffemodel(bad)


def test_sixteen_bit_grey_every_value(tmp_path):
    """All 65536 values once: each rounding boundary of round(v / 257)."""
    arr = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(arr).save(tmp_path / "all.png")
    np.testing.assert_array_equal(_load(tmp_path / "all.png")[..., 0], _sixteen(arr))


def test_thirty_two_bit_rounding_boundaries(tmp_path):
    """Pairs of values straddling k + 1/2 of round(v * 255 / (2**31 - 1)),
    computed with exact integers."""
    top = 2**31 - 1
    values = []
    for k in (0, 1, 127, 200, 254):
        below = ((2 * k + 1) * top) // 510  # v * 510 <= (2k + 1) * top
        values += [below, below + 1]
    arr = np.array([values], np.int32)
    Image.fromarray(arr).save(tmp_path / "b.tif")
    expected = [(2 * v * 255 + top) // (2 * top) for v in values]
    assert expected[0::2] == [0, 1, 127, 200, 254] and expected[1::2] == [1, 2, 128, 201, 255]
    assert _load(tmp_path / "b.tif")[0, :, 0].tolist() == expected


def test_float_nan_is_black(tmp_path):
    """NaN in a float image becomes 0 (imageio's documented rule)."""
    arr = np.array([[np.nan, 0.5, 1.0]], np.float32)
    Image.fromarray(arr, "F").save(tmp_path / "nan.tif")
    assert _load(tmp_path / "nan.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_bilinear_kernel_of_every_fcn_size_follows_the_formula():
    from face_segmentation_pytorch.models.fcn8s import bilinear_upsampling_kernel

    for f in range(1, 9):
        k = 2 * f - f % 2  # 1, 4, 5, 8, 9, 12, 13, 16
        got = bilinear_upsampling_kernel(2, k).numpy()
        np.testing.assert_allclose(got, fcn_weight(2, f), rtol=1e-6, atol=0, err_msg=f"k={k}")


def test_crop_fits_exactly_and_refuses_either_axis():
    from face_segmentation_pytorch.models.fcn8s import Crop

    x = torch.arange(9 * 9, dtype=torch.float32).view(1, 1, 9, 9)
    like = torch.zeros(1, 1, 4, 4)
    np.testing.assert_array_equal(Crop(5)(x, like).numpy(), x[..., 5:9, 5:9].numpy())  # o + h == H
    for shape in [(8, 20), (20, 8)]:
        with pytest.raises(ValueError, match="does not fit"):
            Crop(5)(torch.zeros(1, 1, *shape), like)


def test_constructor_defaults_and_validation():
    with torch.device("meta"):
        model = FaceSegmentationNet()
    assert (model.num_classes, model.channel_divisor, model.input_size, model.face_channel) == (21, 1, 500, None)
    assert model.scale_pool4.weight.shape == (512,) and model.scale_pool3.weight.shape == (256,)
    assert model.score_pool4.weight.shape == (21, 512, 1, 1) and model.score_pool3.weight.shape == (21, 256, 1, 1)
    assert FaceSegmentationNet(21, channel_divisor=16, face_channel=15).face_channel == 15
    assert FaceSegmentationNet(2, channel_divisor=16, face_channel=1).face_channel == 1
    for kwargs in [dict(channel_divisor=3), dict(face_channel=21), dict(face_channel=0)]:
        with pytest.raises(ValueError):
            FaceSegmentationNet(21, **{"channel_divisor": 16, **kwargs})


def test_the_narrowest_net_converts(tmp_path):
    """channel_divisor 64 (conv1_1 with one filter) is read as 64, a conv1_1
    of 3 filters or a one-class score_fr is refused."""
    from face_segmentation_pytorch.errors import CaffeModelError
    from face_segmentation_pytorch.formats.caffe import CaffeLayer, caffe_layers_to_state_dict
    from face_segmentation_pytorch.models.fcn8s import architecture_from_state_dict

    layers = random_layers(2, 64, seed=8)
    state, report = convert_caffemodel(write_caffemodel(tmp_path / "n.caffemodel", layers))
    assert report.channel_divisor == 64 and sorted(report.loaded) == sorted(layers)
    assert architecture_from_state_dict(state) == {"num_classes": 2, "channel_divisor": 64}
    bad = dict(state)
    bad["conv1_1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ValueError):
        architecture_from_state_dict(bad)
    for name, blob in [
        ("conv1_1", np.zeros((3, 3, 3, 3), np.float32)),
        ("score_fr", np.zeros((1, 64, 1, 1), np.float32)),
    ]:
        broken = {**layers, name: [blob, layers[name][1][: blob.shape[0]]]}
        with pytest.raises(CaffeModelError):
            caffe_layers_to_state_dict([CaffeLayer(n, "", b) for n, b in broken.items()])
    extra = {**layers, "fc8": [np.ones(3, np.float32)]}
    with pytest.raises(CaffeModelError, match="fc8"):
        caffe_layers_to_state_dict([CaffeLayer(n, "", b) for n, b in extra.items()])


def test_from_state_dict_is_strict_and_passes_options():
    torch.manual_seed(0)
    state = FaceSegmentationNet(21, channel_divisor=16).state_dict()
    model = FaceSegmentationNet.from_state_dict(state, face_channel=15, input_size=300)
    assert (model.face_channel, model.input_size) == (15, 300)
    del state["fc7.bias"]
    with pytest.raises(RuntimeError, match="fc7.bias"):
        FaceSegmentationNet.from_state_dict(state)


def test_pmap_follows_the_face_channel_rule():
    """sigmoid(face - background), face = the chosen channel or the best non-background one."""
    torch.manual_seed(1)
    model = FaceSegmentationNet(21, channel_divisor=16, face_channel=15).eval()
    x = torch.randn(1, 3, 17, 23) * 50
    with torch.no_grad():
        s = model(x).double()
        for rule, face in [("default", s[:, 15]), (15, s[:, 15]), (None, s[:, 1:].amax(1)), (3, s[:, 3])]:
            got = model(x, as_pmap=True) if rule == "default" else model(x, as_pmap=True, face_channel=rule)
            np.testing.assert_allclose(got.double(), torch.sigmoid(face - s[:, 0]), atol=1e-6, err_msg=str(rule))


def test_a_lone_forward_hook_sees_its_layer_under_no_grad():
    """Forward hooks (without pre-hooks) and pre-hooks alone both make the
    fast path step aside, so the hooked layer really runs and the hook fires."""
    torch.manual_seed(2)
    model = FaceSegmentationNet(2, channel_divisor=16).eval()
    x = torch.randn(1, 3, 9, 11) * 50
    seen = {}

    def after(module, inputs, output):  # returns None: the output is left as it is
        seen["conv3_1"] = output.clone()

    def before(module, inputs):
        seen["fc6_in"] = inputs[0].clone()

    h1 = model.conv3_1.register_forward_hook(after)
    h2 = model.fc6.register_forward_pre_hook(before)
    with torch.no_grad():
        out = model(x)
    h1.remove()
    h2.remove()
    assert set(seen) == {"conv3_1", "fc6_in"}
    with torch.no_grad():
        h = x
        for name in ("conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2"):
            h = getattr(model, name)(h)
            if name.startswith("conv"):
                h = h.relu()
        np.testing.assert_allclose(seen["conv3_1"].numpy(), model.conv3_1(h).numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(model(x).numpy(), out.numpy(), rtol=0, atol=1e-4)
