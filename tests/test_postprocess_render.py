"""Post-processing on synthetic masks with known answers; overlays, cut-outs, galleries."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from face_segmentation_pytorch import ConfigError
from face_segmentation_pytorch.pipeline.postprocess import (
    apply_steps,
    fill_holes,
    full_postprocess,
    largest_component,
    parse_steps,
    smooth,
)
from face_segmentation_pytorch.pipeline.render import cutout, gallery, heatmap_to_png_array, overlay


def _canvas(h=40, w=40):
    return np.zeros((h, w), bool)


def test_largest_component_keeps_the_biggest_blob():
    m = _canvas()
    m[2:5, 2:5] = True  # 9 px
    m[10:20, 10:20] = True  # 100 px
    m[30:34, 30:34] = True  # 16 px
    out = largest_component(m)
    expected = _canvas()
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(out, expected)


def test_largest_component_is_8_connected_and_handles_empty():
    m = _canvas(5, 5)
    m[0, 0] = m[1, 1] = m[2, 2] = True  # diagonal chain: one component
    m[4, 0] = m[4, 1] = True  # two pixels apart from it
    np.testing.assert_array_equal(largest_component(m), np.eye(5, dtype=bool) & (np.arange(5) < 3)[:, None])
    assert not largest_component(_canvas()).any()


def test_fill_holes_fills_enclosed_background_only():
    m = _canvas()
    m[5:25, 5:25] = True
    m[10:15, 10:15] = False  # enclosed hole
    m[30:40, 30:35] = True
    m[30:38, 31:34] = False  # a notch open to the bottom border: not a hole
    out = fill_holes(m)
    expected = m.copy()
    expected[10:15, 10:15] = True
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_when_the_corner_is_foreground():
    m = np.ones((9, 9), bool)
    m[3:6, 3:6] = False
    assert fill_holes(m).all()


def test_smooth_removes_specks_and_closes_gaps():
    m = _canvas()
    m[8:32, 8:32] = True
    m[20, 8:32] = False  # a one-pixel crack through the square
    m[2, 2] = True  # an isolated speck
    out = smooth(m)
    assert not out[2, 2]
    assert out[20, 12:28].all()
    assert out[12:28, 12:28].all() and not out[:6, :].any()


def test_full_postprocess_gives_one_solid_face():
    m = _canvas(60, 60)
    m[10:50, 10:50] = True
    m[25:30, 25:30] = False  # hole
    m[2:5, 55:58] = True  # noise blob
    out = full_postprocess(m)
    assert out[12:48, 12:48].all()
    assert not out[:6, 52:].any()
    assert largest_component(out).sum() == out.sum()


def test_steps_parse_and_apply():
    assert parse_steps("largest, fill_holes") == ("largest", "fill_holes")
    assert parse_steps(None) == ()
    with pytest.raises(ConfigError, match="unknown post-processing step 'blur'.*largest, fill_holes, smooth, full"):
        parse_steps("largest,blur")
    m = _canvas()
    m[5:15, 5:15] = True
    m[8, 8] = False
    m[30, 30] = True
    out = apply_steps(m, ("largest", "fill_holes"))
    assert out[5:15, 5:15].all() and not out[30, 30]


def test_overlay_blends_red_on_the_mask():
    img = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    out = np.asarray(overlay(img, mask))
    assert out[0, 0].tolist() == [178, 50, 50]  # 0.5 * 100 + 0.5 * (255, 0, 0), rounded
    assert out[3, 3].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="differ in size"):
        overlay(img, np.zeros((3, 3)))


def test_cutout_alpha_is_the_probability():
    img = np.zeros((2, 3, 3), np.uint8)
    p = np.array([[0.0, 0.5, 1.0], [0.25, 0.75, 0.2]], np.float32)
    rgba = np.asarray(cutout(img, p))
    assert rgba.shape == (2, 3, 4)
    np.testing.assert_array_equal(rgba[..., 3], np.rint(p * 255).astype(np.uint8))


def test_heatmap_bit_depths():
    p = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert heatmap_to_png_array(p, 8).tolist() == [[0, 128, 255]]
    assert heatmap_to_png_array(p, 16).tolist() == [[0, 32768, 65535]]
    assert heatmap_to_png_array(p, 16).dtype == np.uint16


def test_gallery_lays_out_rows_and_columns():
    a = Image.new("RGB", (100, 50), "red")
    b = Image.new("L", (100, 50), 128)
    pic = gallery([("one", [a, a, b]), ("two", [a, a, b])], tile=64)
    assert pic.height > 2 * 64 and pic.width > 3 * 128
    # The first tile of the first row is red at its centre.
    assert pic.getpixel((6 + 64, 16 + 6 + 16 + 32))[0] > 200
