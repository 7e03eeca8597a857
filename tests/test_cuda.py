"""CUDA: the defaults against Caffe, each precision's cost, and the pipelines on a GPU.

Every test here needs a CUDA device and skips without one (this project's own
machines and CI have none; GPU figures are measured by benchmarks/gpu.py). The
Caffe references are computed on the CPU by OpenCV DNN, as everywhere else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import _photo, run_cli

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict
from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")

#: Relative error against Caffe per precision: fp32 is the README's promise;
#: the others are what an H100 measured with random weights (GPU_NOTES), with room.
BOUNDS = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 1e-2, "bf16": 5e-2}


def _input(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-123.0, 151.0, size=(1, 3, h, w)).astype(np.float32)


def _scores(net, x: np.ndarray, precision: str) -> np.ndarray:
    """Raw scores of the slim net on CUDA through FaceSegmenter's own model and precision scope."""
    from face_segmentation_pytorch.pipeline.precision import precision_scope

    sd = load_caffemodel_as_statedict(net.caffemodel)
    model = FaceSegmentationNet(net.num_classes, channel_divisor=net.channel_divisor)
    model.load_state_dict(sd)
    seg = fsp.FaceSegmenter(model.eval(), device="cuda", threshold=None, precision=precision, progress=False)
    dtype = seg.dtype
    with torch.inference_mode(), precision_scope(precision, seg.device):
        out = seg.model(torch.from_numpy(x).to("cuda", dtype).contiguous(memory_format=torch.channels_last))
    return out.float().cpu().numpy()


@pytest.mark.parametrize("size", [(31, 45), (500, 500), (241, 377)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_default_precision_on_cuda_equals_caffe(slim_net, size):
    x = _input(*size)
    ref = slim_net.opencv_scores(x)
    got = _scores(slim_net, x, "fp32")
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"[cuda] fp32 {size}: relative error {err:.2e}")
    assert err < BOUNDS["fp32"]
    np.testing.assert_array_equal(got.argmax(1) != 0, ref.argmax(1) != 0)


@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_reduced_precisions_on_cuda_stay_within_their_bounds(slim_net, precision):
    x = _input(256, 256)
    ref = slim_net.opencv_scores(x)
    got = _scores(slim_net, x, precision)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    flips = float(((got.argmax(1) != 0) != (ref.argmax(1) != 0)).mean())
    print(f"[cuda] {precision}: relative error {err:.2e}, mask pixels that differ {flips:.4%}")
    assert err < BOUNDS[precision]
    assert flips < 0.02


def test_the_callers_tf32_flags_survive_a_forward(slim_weights_dir):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cuda", progress=False)
        seg.segment(_photo(60, 80, 0))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_linknet_fp32_on_cuda_equals_the_independent_forward():
    from test_linknet import random_state, reference_forward

    from face_segmentation_pytorch.pipeline.precision import precision_scope

    sd = random_state(seed=3)
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 3, 256, 256)).astype(np.float32))
    want = reference_forward(sd, x)  # float64 on the CPU
    model = fsp.LinkNet34()
    model.load_state_dict(sd)
    seg = fsp.FaceSegmenter(model.eval(), device="cuda", threshold=None, progress=False)
    with torch.inference_mode(), precision_scope("fp32", seg.device):
        got = seg.model(x.to("cuda").contiguous(memory_format=torch.channels_last)).double().cpu()
    err = float((got - want).abs().max() / want.abs().max())
    print(f"[cuda] LinkNet34 fp32: relative error {err:.2e}")
    assert err < 1e-4


def test_pipelines_on_cuda_agree_and_match_the_cpu(tmp_path, slim_weights_dir):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(6):
        _photo(120 + 10 * k, 90, k).save(imgs / f"{k}.jpg")
    for name, args in {
        "cpu": ("DEVICE=cpu",),
        "threads": ("DEVICE=cuda", "PIPELINE=threads"),
        "processes": ("DEVICE=cuda",),  # auto: processes on CUDA
    }.items():
        proc = run_cli(
            f"MODEL_PARAMS_DIR={slim_weights_dir}",
            f"IMGS_DIR={imgs}",
            f"OUT_DIR={tmp_path / name}",
            "BATCH_SIZE=4",
            "PROGRESS=false",
            *args,
        )
        assert proc.returncode == 0, proc.stderr
        assert ("worker process" in proc.stderr) == (name == "processes")
    for k in range(6):
        maps = {
            n: np.asarray(Image.open(tmp_path / n / f"{k}__heatmap.png")).astype(int)
            for n in ("cpu", "threads", "processes")
        }
        for n in ("threads", "processes"):
            diff = np.abs(maps[n] - maps["cpu"])
            # fp32 on CUDA is ~4e-6 off the CPU: a heatmap level flips only where
            # the probability sits on a rounding boundary.
            assert diff.max() <= 1 and diff.mean() < 0.01, (n, k)


def test_compiled_linknet_with_cuda_graphs_keeps_each_result():
    """COMPILE on CUDA runs LinkNet34 through CUDA graphs (reduce-overhead), whose
    outputs live in the graph's memory and are overwritten by the next replay: each
    result must stay what it was after later calls, and equal the uncompiled forward."""
    from test_linknet import random_state

    sd = random_state(seed=5)
    model = fsp.LinkNet34()
    model.load_state_dict(sd)
    plain = fsp.FaceSegmenter(model.eval(), device="cuda", threshold=None, precision="fp16", progress=False)
    graphed = fsp.FaceSegmenter(
        model.eval(), device="cuda", threshold=None, precision="fp16", compile=True, progress=False
    )
    rng = np.random.default_rng(4)
    xs = [torch.from_numpy(rng.normal(0, 1, (1, 3, 256, 256)).astype(np.float32)) for _ in range(4)]
    with torch.inference_mode():
        got = [graphed._forward(x) for x in xs]  # kept without copying, as the pipeline keeps them
        kept = [g.clone() for g in got]
        for x in xs:  # more replays
            graphed._forward(x)
        want = [plain._forward(x) for x in xs]
    for g, k, w in zip(got, kept, want):
        assert torch.equal(g, k)  # not overwritten by later replays
        assert float((g - w).abs().max()) < 1e-2
    assert not torch.equal(got[0], got[1])  # different inputs, different maps
