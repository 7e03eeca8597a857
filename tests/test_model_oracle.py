"""The network against a real Caffe runtime (OpenCV DNN) on generated caffemodels.

Every weight is random, the deconvolutions and Scale layers too, so a
misaligned crop or a wrong upsampling kernel shows in the scores (with the
deploy's 1e-4 scale the pool3 branch would barely register).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import make_caffe_net
from torch import nn

from face_segmentation_pytorch.formats.caffe import convert_caffemodel, load_caffemodel_as_statedict
from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet, scores_to_mask, scores_to_pmap

SIZES = [(1, 1), (31, 45), (257, 513), (500, 500)]
TOL = 1e-4


def _input(h: int, w: int, seed: int = 1) -> np.ndarray:
    # Mean-subtracted pixel values span about -123..151.
    return np.random.default_rng(seed).uniform(-123.0, 151.0, size=(1, 3, h, w)).astype(np.float32)


def _ours(net, x: np.ndarray, **model_kwargs) -> np.ndarray:
    sd = load_caffemodel_as_statedict(net.caffemodel)
    model = FaceSegmentationNet(net.num_classes, channel_divisor=net.channel_divisor, **model_kwargs)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def _rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    err = float(np.abs(a - ref).max() / np.abs(ref).max())
    # Shown with `pytest -s`; the README quotes these.
    print(f"[oracle] {ref.shape[1]} classes {ref.shape[2]}x{ref.shape[3]}: relative error {err:.2e}")
    return err


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_scores_and_masks_equal_caffe(slim_net, size):
    x = _input(*size)
    ref = slim_net.opencv_scores(x)
    out = _ours(slim_net, x)
    assert out.shape == ref.shape == (1, 21, *size)
    assert _rel_err(out, ref) < TOL
    ref_mask = ref.argmax(axis=1) != 0
    mask = scores_to_mask(torch.from_numpy(out)).numpy()
    assert 0 < ref_mask.sum() < ref_mask.size or size == (1, 1)
    np.testing.assert_array_equal(mask, ref_mask)
    # The C++ tool's rule: channel 15 against background.
    np.testing.assert_array_equal(
        scores_to_mask(torch.from_numpy(out), face_channel=15).numpy(), ref[:, 15] > ref[:, 0]
    )


@pytest.mark.parametrize("size", [(1, 1), (31, 45), (300, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_two_class_model_equals_caffe(tmp_path, reference_prototxt, size):
    net = make_caffe_net(tmp_path, reference_prototxt, num_classes=2, seed=3)
    x = _input(*size, seed=4)
    ref = net.opencv_scores(x)
    sd = load_caffemodel_as_statedict(net.caffemodel)
    model = FaceSegmentationNet.from_state_dict(sd).eval()
    assert model.num_classes == 2
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
        pmap = model(torch.from_numpy(x), as_pmap=True).numpy()
    assert _rel_err(out, ref) < TOL
    np.testing.assert_array_equal(pmap > 0.5, ref.argmax(axis=1) != 0)


def test_deploy_fixed_layers_equal_caffe(tmp_path, reference_prototxt):
    """With the published bilinear kernels and 0.01 / 0.0001 scales."""
    net = make_caffe_net(tmp_path, reference_prototxt, fixed="deploy", seed=5)
    x = _input(64, 80, seed=6)
    assert _rel_err(_ours(net, x), net.opencv_scores(x)) < TOL


@pytest.mark.parametrize("size", [(1, 1), (257, 513)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_channels_last_layout_equals_caffe(slim_net, size):
    """The default CPU path (FaceSegmenter, CLI) runs channels-last."""
    x = _input(*size)
    ref = slim_net.opencv_scores(x)
    model = FaceSegmentationNet.from_state_dict(load_caffemodel_as_statedict(slim_net.caffemodel)).eval()
    model = model.channels_last_()
    assert model._channels_last()
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for name, p in model.named_parameters()
        if p.dim() == 4 and not name.startswith("fc6.")
    )
    assert model.fc6.weight.is_contiguous()  # read in place by the fast path's matrix product
    assert not model.upscore8.weight.requires_grad  # fixed layers stay fixed
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert _rel_err(out, ref) < TOL
    np.testing.assert_array_equal(scores_to_mask(torch.from_numpy(out)).numpy(), ref.argmax(axis=1) != 0)


def test_dense_path_equals_caffe_too(slim_net):
    """fast_inference=False (and training-style autograd) runs every layer densely."""
    x = _input(31, 45)
    ref = slim_net.opencv_scores(x)
    model = FaceSegmentationNet.from_state_dict(load_caffemodel_as_statedict(slim_net.caffemodel)).eval()
    model.fast_inference = False
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert _rel_err(out, ref) < TOL
    model.fast_inference = True
    out_grad = model(torch.from_numpy(x))  # autograd on: dense path
    assert out_grad.requires_grad and _rel_err(out_grad.detach().numpy(), ref) < TOL


@pytest.mark.parametrize("size, batch", [((1, 1), 1), ((500, 500), 1), ((37, 301), 2), ((300, 300), 3)])
def test_banded_trunk_skips_work_and_equals_dense(size, batch, monkeypatch):
    from face_segmentation_pytorch.models import banded

    torch.manual_seed(0)
    model = FaceSegmentationNet(21, channel_divisor=16).eval()
    for m in model.modules():  # weights that keep activations alive through 13 ReLUs
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            nn.init.normal_(m.bias, 0, 0.1)
    x = torch.randn(batch, 3, *size) * 60
    computed = 0
    real_conv = banded.F.conv2d

    def counting_conv(inp, weight, bias=None, *args, **kwargs):
        nonlocal computed
        out = real_conv(inp, weight, bias, *args, **kwargs)
        if weight.shape[-1] == 3 and weight.shape[1] != 3:  # conv1_2 ... conv5_3
            computed += out.numel() * weight.shape[1]
        return out

    # (This patches torch.nn.functional itself; only the fast run is counted.)
    monkeypatch.setattr(banded.F, "conv2d", counting_conv)
    with torch.no_grad():
        fast = model(x)
    monkeypatch.setattr(banded.F, "conv2d", real_conv)
    with torch.no_grad():
        model.fast_inference = False
        dense = model(x)
        model.fast_inference = True
    assert (fast - dense).abs().max() <= 1e-5 * dense.abs().max()
    if size == (500, 500):
        from benchmarks_flops import trunk_macs

        # Measured: 77% of the dense trunk's multiply-adds at 500x500 (the edge
        # rings widen with depth, so conv4 and conv5 run densely).
        assert computed < 0.8 * trunk_macs(model, x)


def test_onnx_export_in_onnxruntime_equals_caffe(slim_net, tmp_path):
    import onnxruntime as ort

    from face_segmentation_pytorch.export import export_onnx

    model = FaceSegmentationNet.from_state_dict(load_caffemodel_as_statedict(slim_net.caffemodel))
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    for size in [(1, 1), (257, 513)]:
        x = _input(*size)
        ref = slim_net.opencv_scores(x)
        out = session.run(["score"], {"data": x})[0]
        assert _rel_err(out, ref) < TOL
        np.testing.assert_array_equal(out.argmax(axis=1) != 0, ref.argmax(axis=1) != 0)


def test_floor_mode_pooling_is_detected(slim_net):
    """The oracle can fail: the earlier port's floor-mode pooling disagrees with Caffe."""
    x = _input(257, 513)
    ref = slim_net.opencv_scores(x)
    sd = load_caffemodel_as_statedict(slim_net.caffemodel)
    model = FaceSegmentationNet(21, channel_divisor=16)
    model.load_state_dict(sd)
    for m in model.modules():
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = False
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(x)).numpy()
    assert _rel_err(out, ref) > 1e-2


def test_pmap_collapse_matches_softmax_definition():
    scores = torch.randn(2, 21, 5, 7)
    fg = scores[:, 1:].amax(1)
    two = torch.stack([scores[:, 0], fg], dim=1)
    expected = torch.softmax(two, dim=1)[:, 1]
    torch.testing.assert_close(scores_to_pmap(scores), expected)
    torch.testing.assert_close(
        scores_to_pmap(scores, face_channel=15),
        torch.softmax(scores[:, [0, 15]], dim=1)[:, 1],
    )
    assert torch.equal(scores_to_pmap(scores) > 0.5, scores.argmax(1) != 0)


def test_face_channel_is_validated():
    with pytest.raises(ValueError, match="face_channel"):
        FaceSegmentationNet(2, channel_divisor=16, face_channel=15)
    model = FaceSegmentationNet(21, channel_divisor=16).eval()
    with pytest.raises(ValueError, match="face_channel"):
        model(torch.zeros(1, 3, 8, 8), as_pmap=True, face_channel=0)


def test_fixed_parameters_are_not_trainable():
    model = FaceSegmentationNet(21, channel_divisor=16)
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert fixed == {
        "upscore2.weight",
        "upscore_pool4.weight",
        "upscore8.weight",
        "scale_pool4.weight",
        "scale_pool3.weight",
    }
    assert torch.all(model.scale_pool4.weight == 0.01)
    assert torch.all(model.scale_pool3.weight == 0.0001)


def test_crop_that_does_not_fit_raises():
    from face_segmentation_pytorch.models.fcn8s import Crop

    with pytest.raises(ValueError, match="does not fit"):
        Crop(5)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


def test_layer_names_follow_the_prototxt(reference_prototxt):
    import re

    caffe_layers = re.findall(
        r'name:\s*"([^"]+)"\s*\n\s*type:\s*"(Convolution|Deconvolution|Scale)"', reference_prototxt
    )
    model = FaceSegmentationNet(21, channel_divisor=16)
    modules = {n for n, _ in model.named_children()}
    params = {k.rsplit(".", 1)[0] for k in model.state_dict()}
    assert params == {name for name, _ in caffe_layers}
    assert {"score_pool4c", "score_pool3c", "score", "pool1", "relu1_1", "drop6"} <= modules


@pytest.mark.slow
def test_full_size_network_equals_caffe(tmp_path, reference_prototxt, kernel_calls):
    """The published 134M-parameter topology, converted and run at two small sizes.

    Its layers are wide enough for the fast path's Winograd convolutions
    (conv3_1 ... conv5_3) and fc6/fc7 as matrix products; both are counted.
    """
    net = make_caffe_net(tmp_path, reference_prototxt, channel_divisor=1, seed=7)
    del net.layers
    t0 = time.perf_counter()
    sd, report = convert_caffemodel(net.caffemodel)
    parse_s = time.perf_counter() - t0
    print(f"full caffemodel {net.caffemodel.stat().st_size / 2**20:.0f} MiB parsed in {parse_s:.2f} s")
    assert report.num_classes == 21 and report.channel_divisor == 1
    model = FaceSegmentationNet()
    model.load_state_dict(sd, strict=True)
    del sd
    model.eval()
    for size in [(1, 1), (45, 31)]:
        x = _input(*size, seed=8)
        ref = net.opencv_scores(x)
        with torch.no_grad():
            out = model(torch.from_numpy(x)).numpy()
        assert _rel_err(out, ref) < TOL
        np.testing.assert_array_equal(scores_to_mask(torch.from_numpy(out)).numpy(), ref.argmax(1) != 0)
    # The default CPU layout, on the full net.
    model = model.to(memory_format=torch.channels_last)
    x = _input(45, 31, seed=8)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert _rel_err(out, net.opencv_scores(x)) < TOL
    assert kernel_calls["matmul"] == 3 * 2 and kernel_calls["winograd"] >= 3 * 7
