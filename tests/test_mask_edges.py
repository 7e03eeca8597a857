"""Growing, shrinking and feathering masks (issue 15), on generated masks whose
answers the tests work out themselves; and soft alphas in overlays and cut-outs."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from face_segmentation_pytorch import ConfigError
from face_segmentation_pytorch.pipeline import postprocess
from face_segmentation_pytorch.pipeline.postprocess import dilate, feather
from face_segmentation_pytorch.pipeline.render import cutout, heatmap_to_png_array, overlay


def _disc_mask(size: int, radius: float) -> np.ndarray:
    c = size // 2
    y, x = np.ogrid[:size, :size]
    return (y - c) ** 2 + (x - c) ** 2 <= radius**2


def _radius_from_area(mask: np.ndarray) -> float:
    return float(np.sqrt(mask.sum() / np.pi))


def _pairwise_min_dist(h: int, w: int, targets: np.ndarray) -> np.ndarray:
    """For every pixel of an h x w image, the Euclidean distance between
    centres to the nearest pixel of ``targets`` (inf when there is none): the
    definition, by brute force, with no OpenCV."""
    ys, xs = np.nonzero(targets)
    if ys.size == 0:
        return np.full((h, w), np.inf)
    gy, gx = np.mgrid[:h, :w]
    d2 = (gy.reshape(-1, 1) - ys) ** 2 + (gx.reshape(-1, 1) - xs) ** 2
    return np.sqrt(d2.min(axis=1)).reshape(h, w)


def _blobs(h: int, w: int, seed: int) -> np.ndarray:
    """A few overlapping discs and boxes, some touching the border."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    y, x = np.ogrid[:h, :w]
    for _ in range(4):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 7)
        m |= (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    m[rng.integers(0, h // 2) :, : rng.integers(2, 6)] = True  # a band on the left border
    m[rng.integers(0, h), rng.integers(0, w)] = True  # a lone pixel
    return m


# ---------------------------------------------------------------- dilate


def test_disc_grows_and_shrinks_by_the_given_radius():
    disc = _disc_mask(101, 20)
    assert abs(_radius_from_area(disc) - 20) < 1
    grown, shrunk = dilate(disc, 3), dilate(disc, -3)
    assert grown.dtype == bool and grown.shape == disc.shape
    assert abs(_radius_from_area(grown) - 23) < 1
    assert abs(_radius_from_area(shrunk) - 17) < 1
    # Round in every direction: between the discs of radius R and R +- 1
    # (the triangle inequality gives the outer one for growing, the inner one
    # for shrinking; pixel-centre rounding costs at most a pixel the other way).
    assert not (grown & ~_disc_mask(101, 23)).any() and not (_disc_mask(101, 22) & ~grown).any()
    assert not (_disc_mask(101, 17) & ~shrunk).any() and not (shrunk & ~_disc_mask(101, 18)).any()
    assert not dilate(disc, -25).any()
    assert not dilate(disc, -21).any()


def test_growing_past_the_image_fills_it():
    m = np.zeros((50, 50), bool)
    m[7, 41] = True
    assert dilate(m, 200).all()
    assert not dilate(np.zeros((50, 50), bool), 200).any()  # nothing to grow
    assert dilate(np.ones((50, 50), bool), -200).all()  # no background to erode from


def test_zero_is_the_identity():
    m = _blobs(30, 40, 1)
    out = dilate(m.astype(np.uint8) * 255, 0)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, m)
    a = feather(m, 0)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, m.astype(np.float32))


@pytest.mark.parametrize("kernel_max", [0, 10**6], ids=["distance-transform", "disc-kernel"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dilate_matches_the_definition_by_brute_force(monkeypatch, kernel_max, seed):
    # Both implementations (disc kernel for small radii, distance transform for
    # large ones) against "within distance r of a mask pixel" / "no background
    # pixel within r", with pixels outside the image counting for nothing.
    monkeypatch.setattr(postprocess, "_KERNEL_MAX_RADIUS", kernel_max)
    h, w = 28, 33
    m = _blobs(h, w, seed)
    to_mask = _pairwise_min_dist(h, w, m)
    to_background = _pairwise_min_dist(h, w, ~m)
    for r in (1, 2, 3, 4, 5, 7, 10, 13, 40):
        np.testing.assert_array_equal(dilate(m, r), to_mask <= r, err_msg=f"grow {r}")
        np.testing.assert_array_equal(dilate(m, -r), to_background > r, err_msg=f"shrink {r}")


def test_a_mask_on_the_border_is_not_eroded_from_the_border():
    m = np.zeros((40, 40), bool)
    m[:20, :] = True  # touches the top, left and right borders
    out = dilate(m, -3)
    expected = np.zeros_like(m)
    expected[:17, :] = True  # only the inner edge moved
    np.testing.assert_array_equal(out, expected)
    a = feather(m, 4)
    assert (a[:16] == 1).all()  # 1 up to the frame, no fade at the border
    assert (a[24:] == 0).all()


def test_numpy_integers_are_pixels():
    m = _disc_mask(41, 5)
    np.testing.assert_array_equal(dilate(m, np.int64(2)), _disc_mask(41, 7))


# ---------------------------------------------------------------- feather


def _square_signed_distance(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Signed distance from each pixel centre to the outline of the square of
    pixels [y0, y1) x [x0, x1), i.e. the box [y0-.5, y1-.5] x [x0-.5, x1-.5]:
    positive inside, negative outside."""
    y, x = np.mgrid[:h, :w].astype(float)
    top, bottom, left, right = y0 - 0.5, y1 - 0.5, x0 - 0.5, x1 - 0.5
    inside_depth = np.minimum.reduce([y - top, bottom - y, x - left, right - x])
    dy = np.maximum.reduce([top - y, np.zeros_like(y), y - bottom])
    dx = np.maximum.reduce([left - x, np.zeros_like(x), x - right])
    return np.where(inside_depth > 0, inside_depth, -np.hypot(dy, dx))


def test_square_feather_has_the_stated_bounds_and_edge():
    px = 6
    m = np.zeros((80, 80), bool)
    m[20:60, 20:60] = True
    a = feather(m, px)
    assert a.dtype == np.float32 and a.shape == m.shape
    assert a.min() >= 0 and a.max() <= 1
    s = _square_signed_distance(80, 80, 20, 60, 20, 60)
    assert (a[s >= px] == 1.0).all()  # at least px deep inside
    assert (a[s <= -px] == 0.0).all()  # at least px outside
    assert ((a > 0) & (a < 1))[np.abs(s) < px - 0.5].all()  # a ramp in between
    row = a[40, :41]  # outside on the left, across the edge at x = 19.5, into the middle
    assert (np.diff(row) >= 0).all()
    # The two pixels either side of the edge are half a pixel from it.
    assert abs(row[19] - 0.5) <= 0.05 and abs(row[20] - 0.5) <= 0.05
    assert row[19] < 0.5 < row[20]
    assert abs((row[19] + row[20]) / 2 - 0.5) < 1e-6
    # The ramp is linear in the distance to the edge: 0.5 + s / (2 px) on the axis.
    np.testing.assert_allclose(row, np.clip(0.5 + s[40, :41] / (2 * px), 0, 1), atol=1e-6)


@pytest.mark.parametrize("px", [1, 3, 8])
def test_feather_matches_the_signed_distance_by_brute_force(px):
    h, w = 26, 31
    m = _blobs(h, w, px)
    s = np.where(m, _pairwise_min_dist(h, w, ~m) - 0.5, 0.5 - _pairwise_min_dist(h, w, m))
    expected = np.clip(0.5 + s / (2 * px), 0, 1)
    np.testing.assert_allclose(feather(m, px), expected, atol=1e-5)


def test_feather_of_empty_and_full_masks():
    assert not feather(np.zeros((20, 30), bool), 5).any()
    assert (feather(np.ones((20, 30), bool), 5) == 1).all()


def test_feather_is_a_soft_alpha_for_overlay_and_cutout():
    m = np.zeros((30, 30), bool)
    m[8:22, 8:22] = True
    a = feather(m, 3)
    img = np.full((30, 30, 3), 100, np.uint8)
    # Overlay blends with the alpha, as for a probability map.
    out = np.asarray(overlay(img, a)).astype(float)
    w = 0.5 * a[..., None].astype(np.float64)
    np.testing.assert_allclose(out, np.rint(100 * (1 - w) + np.array([255, 0, 0]) * w), atol=1)
    # The cut-out's alpha channel is the 8-bit alpha the mask file would hold.
    rgba = np.asarray(cutout(img, a))
    np.testing.assert_array_equal(rgba[..., 3], heatmap_to_png_array(a, 8))
    np.testing.assert_array_equal(heatmap_to_png_array(a, 8), np.rint(a * 255).astype(np.uint8))
    # A float alpha that overshoots 1 by rounding is still an alpha, not 8-bit grey.
    b = a.copy()
    b[15, 15] = 1.0000001
    assert np.asarray(cutout(img, b))[15, 15, 3] == 255


def test_bool_masks_render_as_before():
    img = np.full((6, 6, 3), 100, np.uint8)
    m = np.zeros((6, 6), bool)
    m[1:4, 2:5] = True
    out = np.asarray(overlay(img, m))
    assert (out[m] == [178, 50, 50]).all() and (out[~m] == 100).all()
    np.testing.assert_array_equal(out, np.asarray(overlay(img, m.astype(np.uint8) * 255)))
    np.testing.assert_array_equal(np.asarray(cutout(img, m))[..., 3], m.astype(np.uint8) * 255)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [dilate, feather])
def test_input_validation(fn):
    with pytest.raises(ValueError, match="expected a 2-d mask, got shape \\(4, 4, 3\\)"):
        fn(np.zeros((4, 4, 3), bool), 2)
    for bad in (2.5, 3.0, "3", None, True):
        with pytest.raises(TypeError, match="must be a whole number of pixels"):
            fn(np.zeros((4, 4), bool), bad)


def test_feather_refuses_a_negative_width():
    with pytest.raises(ValueError, match="must be >= 0 pixels, got -2"):
        feather(np.zeros((4, 4), bool), -2)


@pytest.mark.parametrize("fn", [dilate, feather])
def test_without_opencv_the_error_says_how_to_get_it(monkeypatch, fn):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    with pytest.raises(ConfigError, match="needs OpenCV: pip install"):
        fn(np.zeros((4, 4), bool), 1)
