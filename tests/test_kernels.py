"""The exact CPU kernels of the fast path against torch's own convolution and Caffe."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from face_segmentation_pytorch import FaceSegmentationNet
from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict
from face_segmentation_pytorch.models import kernels
from face_segmentation_pytorch.models.fcn8s import scores_to_mask

# Winograd F(4x4, 3x3) in fp32 measured 4e-6 to 1.2e-5 of the output's largest
# value on one layer (the transforms scale values by up to ~100 and back).
LAYER_TOL = 5e-5


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).detach().abs().max() / ref.detach().abs().max())


def _conv(c: int, k: int, size: int, seed: int = 0, bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, k, size, bias=bias)
    nn.init.normal_(conv.weight, 0, (2.0 / (c * size * size)) ** 0.5)
    if bias:
        nn.init.normal_(conv.bias, 0, 0.1)
    return conv


@pytest.mark.parametrize(
    "n, c, k, h, w, pads",
    [
        (1, 32, 48, 1, 1, (1, 1, 1, 1)),  # one pixel: one tile, mostly padding
        (2, 16, 8, 37, 29, (1, 1, 1, 1)),  # sizes that are not multiples of 4
        (1, 64, 32, 8, 8, (1, 1, 1, 1)),  # exactly two tiles a side
        (1, 24, 40, 10, 17, (0, 1, 1, 0)),  # asymmetric pads, as banded.py's regions
        (3, 8, 8, 5, 3, (0, 0, 0, 0)),  # no padding: 3x1 output
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("band_bytes", [64 * 2**20, 1])  # 1: one tile row per band
def test_winograd_equals_direct_convolution(n, c, k, h, w, pads, channels_last, band_bytes, monkeypatch):
    monkeypatch.setattr(kernels, "_WINOGRAD_BAND_BYTES", band_bytes)
    conv = _conv(c, k, 3)
    x = torch.randn(n, c, h, w).relu()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = F.conv2d(F.pad(x.double(), pads), conv.weight.double(), conv.bias.double())
        out = kernels.winograd_conv3x3(x, conv.weight, conv.bias, pads)
        out_relu = kernels.winograd_conv3x3(x, conv.weight, conv.bias, pads, relu=True)
        no_bias = kernels.winograd_conv3x3(x, conv.weight, None, pads)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out.double(), ref) < LAYER_TOL
    assert _rel(out_relu.double(), ref.relu()) < LAYER_TOL and (out_relu >= 0).all()
    assert _rel(no_bias.double(), ref - conv.bias.double().view(1, -1, 1, 1)) < LAYER_TOL


def test_winograd_error_stays_near_fp32_rounding():
    """The published net's widest layer shape, against a float64 reference."""
    conv = _conv(512, 512, 3)
    x = torch.randn(1, 512, 44, 44).relu()
    with torch.no_grad():
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        direct = _rel(F.conv2d(x, conv.weight, conv.bias, padding=1).double(), ref)
        wino = _rel(kernels.winograd_conv3x3(x, conv.weight, conv.bias).double(), ref)
    print(f"[kernels] 512x512 3x3 conv at 44x44: direct {direct:.1e}, Winograd {wino:.1e}")
    assert wino < LAYER_TOL


def test_winograd_rejects_an_input_with_no_output():
    conv = _conv(4, 4, 3)
    with pytest.raises(ValueError, match="no 3x3 output"):
        kernels.winograd_conv3x3(torch.zeros(1, 4, 1, 1), conv.weight, conv.bias, (0, 0, 0, 0))


def test_winograd_is_chosen_by_channels_device_and_dtype():
    x = torch.zeros(1, 1, 4, 4)
    assert kernels.use_winograd(x, torch.zeros(256, 128, 3, 3))  # conv3_1
    assert kernels.use_winograd(x, torch.zeros(512, 512, 3, 3))
    assert not kernels.use_winograd(x, torch.zeros(128, 128, 3, 3))  # conv2_2
    assert not kernels.use_winograd(x, torch.zeros(4096, 512, 7, 7))  # not 3x3
    assert not kernels.use_winograd(x.double(), torch.zeros(512, 512, 3, 3, dtype=torch.float64))
    assert not kernels.use_winograd(torch.zeros(1, 1, 4, 4, device="meta"), torch.zeros(512, 512, 3, 3))


@pytest.mark.parametrize("kernel, h, w", [(7, 22, 22), (7, 7, 7), (1, 16, 16), (7, 40, 12)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("rows", [1024, 5, 2])  # chunks of rows; of images (2: a short last one)
def test_conv_as_matmul_equals_convolution(kernel, h, w, channels_last, rows, monkeypatch):
    monkeypatch.setattr(kernels, "_MATMUL_ROWS", rows)
    conv = _conv(24, 40, kernel).eval()
    x = torch.randn(3, 24, h, w).relu()
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double())
        ref_no_bias = F.conv2d(x.double(), conv.weight.double())
        out = kernels.conv_as_matmul(x, conv)
        conv.bias = None
        no_bias = kernels.conv_as_matmul(x, conv)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out.double(), ref) < 1e-6
    assert _rel(no_bias.double(), ref_no_bias) < 1e-6


def test_conv_as_matmul_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="not an unpadded stride-1"):
        kernels.conv_as_matmul(torch.zeros(1, 4, 8, 8), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="smaller than the 7x7 kernel"):
        kernels.conv_as_matmul(torch.zeros(1, 4, 6, 9), nn.Conv2d(4, 4, 7))


@pytest.mark.parametrize("size", [(1, 1), (257, 513), (500, 500)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_fast_path_with_every_3x3_layer_on_winograd_equals_caffe(slim_net, size, kernel_calls, monkeypatch):
    """The slim net's layers are too narrow for Winograd by default; force it everywhere."""
    calls = kernel_calls
    monkeypatch.setattr(kernels, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    x = np.random.default_rng(3).uniform(-123.0, 151.0, size=(1, 3, *size)).astype(np.float32)
    ref = slim_net.opencv_scores(x)
    model = FaceSegmentationNet(21, channel_divisor=16)
    model.load_state_dict(load_caffemodel_as_statedict(slim_net.caffemodel))
    model = model.eval().channels_last_()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    print(f"[oracle] Winograd everywhere, {size[0]}x{size[1]}: relative error {err:.2e}")
    assert err < 1e-4
    np.testing.assert_array_equal(scores_to_mask(torch.from_numpy(out)).numpy(), ref.argmax(axis=1) != 0)
    assert calls["winograd"] >= 12 and calls["matmul"] == 2  # conv1_2 ... conv5_3; fc6, fc7


def test_fast_path_kernels_are_used_only_without_autograd(kernel_calls, monkeypatch):
    calls = kernel_calls
    monkeypatch.setattr(kernels, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    model = FaceSegmentationNet(2, channel_divisor=16).eval()
    x = torch.randn(1, 3, 20, 20)
    model(x)  # autograd on: every layer its own module
    assert calls == {"winograd": 0, "matmul": 0}
    model.fast_inference = False
    with torch.no_grad():
        model(x)
    assert calls == {"winograd": 0, "matmul": 0}
    model.fast_inference = True
    with torch.no_grad():
        model(x)
    assert calls["winograd"] > 0 and calls["matmul"] == 2


def test_fast_path_steps_aside_for_autocast_and_layer_hooks(kernel_calls, monkeypatch):
    monkeypatch.setattr(kernels, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    torch.manual_seed(0)
    model = FaceSegmentationNet(2, channel_divisor=16).eval()
    x = torch.randn(1, 3, 20, 20) * 50
    with torch.no_grad():
        ref = model(x)
    kernel_calls.update(winograd=0, matmul=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)  # every layer as its module, in bfloat16 as autocast asks
    assert low.dtype == torch.bfloat16 and kernel_calls == {"winograd": 0, "matmul": 0}
    assert _rel(low.float(), ref) < 0.1

    seen = []
    handle = model.fc7.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with torch.no_grad():
        hooked = model(x)
    handle.remove()
    assert len(seen) == 1 and kernel_calls == {"winograd": 0, "matmul": 0}
    assert _rel(hooked, ref) < 1e-4
    with torch.no_grad():
        model(x)  # hook gone: fast path again
    assert kernel_calls["matmul"] == 2


def test_importing_the_package_first_asks_torch_for_huge_pages():
    code = "import os, sys\nimport face_segmentation_pytorch\nprint(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def run(c, e):
        return subprocess.run(
            [sys.executable, "-c", c], env=e, capture_output=True, text=True, check=True
        ).stdout.strip()

    assert run(code, env) == "1"
    assert run(code, dict(env, THP_MEM_ALLOC_ENABLE="0")) == "0"  # the user's choice stands
    # torch already running: its allocator has decided, so the setting would only mislead.
    assert run("import torch\n" + code, env) == "None"
