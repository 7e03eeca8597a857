"""The CPU paths of issue 25: OpenMP defaults, Winograd F(2x2, 3x3), LinkNet34's fused path in fp32 and bf16.

Every fast path is checked against an independent float64 forward
(``test_linknet.reference_forward``) or float64 convolution. bfloat16 is
tested on any AVX-512 CPU: the product refuses ``PRECISION=bf16`` where the CPU
lacks native bfloat16 (oneDNN would emulate it, slowly), but the emulation
computes the same roundings, so these tests force the check open
(``monkeypatch`` of ``precision._cpu_has_native_bf16``; the product never
does) to check what an AMX or AVX-512 BF16 machine runs. Nothing here is timed
(``benchmarks/cpu.py`` measures).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_linknet import random_state, reference_forward

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch import runtime
from face_segmentation_pytorch.files.imageio import load_image
from face_segmentation_pytorch.models import kernels
from face_segmentation_pytorch.models import linknet as L
from face_segmentation_pytorch.segmentation import precision as precision_module
from face_segmentation_pytorch.segmentation.preprocess import prepare_input
from face_segmentation_pytorch.weights.families import LINKNET34

ROOT = Path(__file__).resolve().parents[1]
#: bfloat16 keeps 8 bits of mantissa; through LinkNet34's 40-odd layers the
#: logits were measured 6e-3 to 1e-2 of their largest value off float64.
BF16_REL = 3e-2
#: The issue's bound: masks of a calibrated random net differ on under 1% of pixels.
MASK_FRACTION = 0.01


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


# --------------------------------------------------------------------------
# OpenMP settings chosen before torch starts.


def _env_without(*keys: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in keys}


def test_importing_the_package_first_sets_a_passive_openmp_wait_policy():
    code = "import os, face_segmentation_pytorch; print(os.environ.get('OMP_WAIT_POLICY'))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=_env_without("OMP_WAIT_POLICY"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert run.stdout.strip() == "PASSIVE"


def test_a_users_wait_policy_stands():
    code = "import os, face_segmentation_pytorch; print(os.environ.get('OMP_WAIT_POLICY'))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, OMP_WAIT_POLICY="ACTIVE"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert run.stdout.strip() == "ACTIVE"


def test_nothing_is_set_once_torch_is_running():
    # torch runs in this process: setting OpenMP variables now would change nothing
    # here and give child processes other settings than this one.
    env: dict[str, str] = {}
    assert "torch" in sys.modules
    assert runtime.apply_defaults(env) == {} and env == {}


# --------------------------------------------------------------------------
# Winograd F(2x2, 3x3).


@pytest.mark.parametrize(
    "n, c, k, h, w",
    [
        (1, 128, 128, 32, 32),  # LinkNet34's encoder2 at 256x256
        (2, 24, 40, 7, 5),  # odd sides: the last tile row and column are cropped
        (3, 16, 8, 1, 1),  # one pixel (encoder4 at a 32x32 input)
        (1, 8, 16, 2, 3),
    ],
)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("chunk_bytes", [16 * 2**20, 1])  # 1: one tile row per chunk
def test_winograd_f2_equals_the_float64_convolution(n, c, k, h, w, with_residual, chunk_bytes, monkeypatch):
    monkeypatch.setattr(kernels, "_F2_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn(n, c, h, w, generator=g).relu().contiguous(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    b = 0.1 * torch.randn(k, generator=g)
    res = torch.randn(n, k, h, w, generator=g).contiguous(memory_format=torch.channels_last) if with_residual else None
    ref = F.conv2d(x.double(), wt.double(), b.double(), padding=1)
    if res is not None:
        ref = ref + res.double()
    ref = ref.relu()
    out = kernels.winograd_f2_conv3x3(x, kernels.winograd_f2_weights(wt), b, residual=res)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    # Its transforms only add and subtract: the error stays at direct fp32 rounding
    # (measured 1e-7 to 7e-7), not F(4x4)'s ~1e-5.
    assert _rel(out, ref) < 2e-6


def test_winograd_f2_is_chosen_for_wide_float32_layers_on_the_cpu():
    x = torch.zeros(1, 128, 8, 8)
    assert kernels.use_winograd_f2(x, torch.zeros(128, 128, 3, 3))
    assert not kernels.use_winograd_f2(x[:, :64], torch.zeros(64, 64, 3, 3))  # measured slower there
    assert not kernels.use_winograd_f2(x.bfloat16(), torch.zeros(128, 128, 3, 3))
    assert not kernels.use_winograd_f2(x, torch.zeros(128, 128, 1, 1))


# --------------------------------------------------------------------------
# LinkNet34's fused path.


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """The three sample portraits and their mirror images, prepared for LinkNet34 at 256x256."""
    images = [
        np.asarray(load_image(ROOT / "assets/samples" / n)) for n in ("grace_hopper.jpg", "astronaut.jpg", "camera.png")
    ]
    images += [img[:, ::-1].copy() for img in images]
    prep = LINKNET34.preprocessing_of(None)
    return torch.stack([prepare_input(img, prep, size=256) for img in images])


@pytest.fixture(scope="module")
def calibrated(photos) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random weights whose face threshold sits at the median logit on the photos (half
    the pixels face, most near the threshold: a hard case for rounding), and their
    float64 logits."""
    state = random_state(1, seed=4)
    median = float(reference_forward(state, photos[:1]).median())
    state["finalconv3.bias"] = state["finalconv3.bias"] - median
    return state, reference_forward(state, photos)


def _fast_model(state, dtype=torch.float32) -> L.LinkNet34:
    model = L.LinkNet34.from_state_dict({k: v.clone() for k, v in state.items()})
    return L.fast_inference_model(model.eval()).to(dtype)


@pytest.fixture
def one_thread():
    """torch on one thread (as the package's worker processes run), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _winograd_layers(model) -> int:
    return sum(isinstance(c, L._Wino) for block in L._PLANS[model].blocks for c in block)


def test_fp32_fast_path_with_winograd_and_the_phase_head_equals_float64(photos, one_thread):
    state = random_state(1, seed=1)
    model = _fast_model(state)
    g = torch.Generator().manual_seed(2)
    for x in (photos[:1], photos[:3], torch.randn(2, 3, 64, 96, generator=g), torch.randn(1, 3, 32, 32, generator=g)):
        with torch.inference_mode():
            assert L.fast_path_applies(model, x)
            y = model(x)
        ref = reference_forward(state, x)
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert _rel(y, ref) < 1e-5, tuple(x.shape)
    assert _winograd_layers(model) == 23  # every stride-1 3x3 layer of encoder2..encoder4; encoder1 stays direct


def test_winograd_only_on_one_thread_and_the_plan_follows_the_thread_count(photos):
    state = random_state(1, seed=1)
    model = _fast_model(state)
    ref = reference_forward(state, photos[:1])
    before = torch.get_num_threads()
    try:
        for threads, layers in ((2, 0), (1, 23), (2, 0)):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                y = model(photos[:1])
            assert _winograd_layers(model) == layers, threads
            assert _rel(y, ref) < 1e-5
    finally:
        torch.set_num_threads(before)


def test_the_head_orders_several_classes_like_the_module(photos, one_thread):
    state = random_state(3, seed=2)
    model = _fast_model(state)
    with torch.inference_mode():
        y = model(photos[:2])
    assert y.shape == (2, 3, 256, 256)
    assert _rel(y, reference_forward(state, photos[:2])) < 1e-5


def test_bf16_fast_path_keeps_its_packed_bf16_weights_and_stays_close(photos, calibrated):
    state, ref = calibrated
    model = _fast_model(state, torch.bfloat16)
    x = photos.bfloat16()
    with torch.inference_mode():
        assert L.fast_path_applies(model, x)
        y = model(x)
        plan = L._PLANS[model]
        model(x[:1])
        assert L._PLANS[model] is plan  # packed once, reused: no per-call cast or reorder
    assert y.dtype == torch.bfloat16
    convs = [plan.stem, *(c for block in plan.blocks for c in block if c is not None), plan.head_conv2]
    assert all(isinstance(c, L._Conv) and c.weight.dtype == torch.bfloat16 for c in convs)  # no Winograd in bf16
    assert _rel(y, ref) < BF16_REL
    assert float(((y.double() > 0) != (ref > 0)).double().mean()) < MASK_FRACTION


def test_bf16_through_the_segmenter_where_forced(photos, calibrated, monkeypatch, tmp_path):
    # What PRECISION=bf16 runs on an AMX or AVX-512 BF16 CPU, forced open here.
    monkeypatch.setattr(precision_module, "_cpu_has_native_bf16", lambda: True)
    state = calibrated[0]
    torch.save(state, tmp_path / "linknet_oneflow_model.pt")
    kw = {"params_dir": tmp_path, "device": "cpu", "threshold": None, "progress": False}
    exact = fsp.FaceSegmenter("linknet34_oneflow", **kw)
    half = fsp.FaceSegmenter("linknet34_oneflow", precision="bf16", **kw)
    assert next(half.model.parameters()).dtype == torch.bfloat16  # converted once, at load
    with torch.inference_mode():  # as segment() runs it
        got, want = half._forward(photos), exact._forward(photos)
    assert half.model in L._PLANS  # the fused path ran in bfloat16
    assert got.dtype == torch.float32
    assert float((got - want).abs().max()) < 0.1  # test_precision.py's bound
    cut = float(want.median())
    assert float(((got > cut) != (want > cut)).double().mean()) < MASK_FRACTION


def test_a_model_object_given_to_a_bf16_segmenter_stays_the_callers(photos, calibrated, monkeypatch):
    # benchmarks/cpu.py and users hand FaceSegmenter their own LinkNet34 (BatchNorm
    # and all). A bf16 segmenter once converted it in place: the caller's weights were
    # rounded to bfloat16 for good, the next fp32 segmenter on it was no longer exact,
    # and the bf16 one ran the slow module path (the object had its fast path off).
    monkeypatch.setattr(precision_module, "_cpu_has_native_bf16", lambda: True)
    state = calibrated[0]
    mine = L.LinkNet34.from_state_dict({k: v.clone() for k, v in state.items()})
    mine.train()
    kw = {"device": "cpu", "threshold": None, "progress": False}
    half = fsp.FaceSegmenter(mine, precision="bf16", **kw)
    assert mine.training and not mine.fast_inference
    assert all(torch.equal(v, state[k]) and v.dtype == state[k].dtype for k, v in mine.state_dict().items())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in mine.modules()) == 48
    with torch.inference_mode():
        got = half._forward(photos[:2])
    assert half.model in L._PLANS  # the fused bf16 path, not the module path
    mine.eval()
    exact = fsp.FaceSegmenter(mine, **kw)
    with torch.inference_mode():
        want = exact._forward(photos[:2])
    ref = torch.sigmoid(calibrated[1][:2, 0])
    assert float((want.double() - ref).abs().max()) < 1e-5  # still exact: nothing was rounded
    assert float((got - want).abs().max()) < 0.1
    cut = float(want.median())
    assert float(((got > cut) != (want > cut)).double().mean()) < MASK_FRACTION


def test_fcn8s_bf16_through_the_segmenter_where_forced(slim_weights_dir, monkeypatch):
    monkeypatch.setattr(precision_module, "_cpu_has_native_bf16", lambda: True)
    yy, xx = np.mgrid[0:120, 0:100]
    blob = np.exp(-(((yy - 60) / 30.0) ** 2 + ((xx - 50) / 25.0) ** 2))
    img = np.stack([200 * blob + 30, 120 + 50 * blob, 180 - 100 * blob], -1).astype(np.uint8)
    kw = {"params_dir": slim_weights_dir, "device": "cpu", "threshold": 0.5, "progress": False}
    exact = fsp.FaceSegmenter(**kw).segment(img)
    half = fsp.FaceSegmenter(precision="bf16", **kw)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    got = half.segment(img)
    assert np.abs(got.pmap - exact.pmap).max() < 0.1
    assert (got.mask != exact.mask).mean() < MASK_FRACTION


# --------------------------------------------------------------------------
# Native bfloat16 or a refusal.


def test_native_bf16_means_the_instructions_not_oneDNNs_emulation():
    flags = precision_module._cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo here")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert precision_module._cpu_has_native_bf16() == native


def test_bf16_is_refused_without_native_bfloat16(monkeypatch):
    monkeypatch.setattr(precision_module, "_cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="native bfloat16.*emulated"):
        precision_module.check_precision("bf16", torch.device("cpu"))
    precision_module.check_precision("fp32", torch.device("cpu"))  # the exact default is never refused


def test_the_cpu_flags_decide_where_torch_cannot_say(monkeypatch):
    class NoQueries:
        pass

    monkeypatch.setattr(torch, "cpu", NoQueries())
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: {"avx512f", "amx_tile", "amx_bf16"})
    assert precision_module._cpu_has_native_bf16()
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert not precision_module._cpu_has_native_bf16()


def test_a_model_made_under_inference_mode_runs_the_fused_path():
    # Such weights carry no version counter; the plan must still be made and kept.
    state = random_state(1, seed=3)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        model = _fast_model(state)
        y = model(x)
        plan = L._PLANS[model]
        model(x)
        assert L._PLANS[model] is plan
    assert _rel(y, reference_forward(state, x)) < 1e-5
