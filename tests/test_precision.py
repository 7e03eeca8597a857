"""PRECISION and COMPILE: exact by default, reduced precision on request, clear refusals.

CUDA itself is not on this project's machines; what needs it is tested where it can
be without it (the scoped TF32 switches, the path chosen for CUDA), and on a CUDA
machine by tests/test_cuda.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch.pipeline.precision import _cpu_has_native_bf16, check_precision, precision_scope


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:80]
    blob = np.exp(-(((yy - 48) / 25.0) ** 2 + ((xx - 40) / 20.0) ** 2))
    return np.stack([200 * blob + 30, 120 + 50 * blob, 180 - 100 * blob], -1).astype(np.uint8)


@pytest.mark.parametrize(
    "precision, message",
    [
        ("fp16", "refused on the CPU"),
        ("tf32", "only on CUDA"),
        ("fp64", "expected fp32, tf32, fp16 or bf16"),
    ],
)
def test_cpu_refusals_are_one_line_errors(tmp_path, slim_weights_dir, precision, message):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    proc = run_cli(
        f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={tmp_path}", "DEVICE=cpu", f"PRECISION={precision}"
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "PRECISION=" in proc.stderr and precision in proc.stderr


def test_bf16_on_the_cpu_runs_where_supported_and_stays_close(slim_weights_dir, photo):
    if not _cpu_has_native_bf16():
        with pytest.raises(ValueError, match="native bfloat16"):
            check_precision("bf16", torch.device("cpu"))
        return
    exact = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=0.5).segment(photo)
    half = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=0.5, precision="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    got = half.segment(photo)
    assert got.pmap.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: probabilities move by up to a few 1e-2,
    # so masks may differ right at the 0.5 boundary only.
    assert np.abs(got.pmap - exact.pmap).max() < 0.1
    assert (got.mask != exact.mask).mean() < 0.02
    assert np.abs(got.pmap - exact.pmap).max() > 0  # it did run in bfloat16


def test_tf32_switches_are_scoped_and_restored():
    cuda = torch.device("cuda")  # the switches exist without a GPU
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with precision_scope("fp32", cuda):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 == before[1]
        with precision_scope("tf32", cuda):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError):
            with precision_scope("fp32", cuda):
                raise RuntimeError("a failed forward")
        assert torch.backends.cuda.matmul.allow_tf32  # restored after an error too
        assert torch.backends.cudnn.deterministic == before[2] and torch.backends.cudnn.benchmark == before[3]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[0]


def test_fcn8s_takes_the_dense_path_on_cuda_and_the_fast_path_on_the_cpu():
    from face_segmentation_pytorch.pipeline.families import FCN8S

    model = fsp.FaceSegmentationNet(channel_divisor=16)
    assert FCN8S.prepare_for_device(model, torch.device("cuda")).fast_inference is False
    assert FCN8S.prepare_for_device(model, torch.device("cpu")).fast_inference is True


def _compile_with(monkeypatch, backend):
    real = torch.compile

    def compile_eager(model, **kwargs):
        kwargs.pop("mode", None)
        return real(model, backend=backend, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eager)


def test_compile_pads_short_batches_so_one_shape_compiles(monkeypatch, slim_weights_dir, photo, capsys):
    import torch._dynamo

    shapes = []

    def recording_backend(gm, example_inputs):
        shapes.append(tuple(example_inputs[0].shape) if example_inputs else None)
        return gm.forward

    torch._dynamo.reset()
    _compile_with(monkeypatch, recording_backend)
    plain = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None, input_size=64)
    comp = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None, input_size=64, compile=True)
    imgs = [photo, photo[:, ::-1].copy(), photo[::-1].copy()]
    first = comp.segment_loaded(imgs[:2])
    compiled = len(shapes)
    assert compiled >= 1
    last = comp.segment_loaded(imgs[2:])  # a short last batch: padded to 2, so no new compilation
    assert len(shapes) == compiled, shapes
    err = capsys.readouterr().err
    assert "compiling the network" in err and "compiled (default mode) in" in err
    for got, want in zip(first + last, plain.segment_loaded(imgs)):
        np.testing.assert_allclose(got.pmap, want.pmap, atol=1e-5)
    torch._dynamo.reset()


def test_compile_falls_back_with_one_line_where_unavailable(monkeypatch, slim_weights_dir, photo, capsys):
    def broken(model, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("no C++ compiler found\nlong details")

        return fails

    monkeypatch.setattr(torch, "compile", broken)
    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None, input_size=64, compile=True)
    got = seg.segment(photo)
    plain = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None, input_size=64).segment(photo)
    np.testing.assert_array_equal(got.pmap, plain.pmap)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "not available" in ln]
    assert lines == [
        "face_segmentation_pytorch: compilation is not available here (no C++ compiler found); running uncompiled"
    ]


def test_a_batch_that_does_not_fit_is_split_and_retried(capsys):
    """run_inputs splits on out-of-memory (the forward here stands in for a GPU
    that fits two images) and gives the same maps as single-image runs."""
    from face_segmentation_pytorch.pipeline.inference import run_inputs

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    seen, ran = [], []

    def forward(batch):
        seen.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise oom("CUDA out of memory. Tried to allocate 9 GiB")
        ran.append(batch.shape[0])
        return torch.sigmoid(batch[:, 0] - batch[:, 1])

    rng = np.random.default_rng(0)
    inputs = [torch.from_numpy(rng.normal(size=(3, 8, 6)).astype(np.float32)) for _ in range(5)]
    sizes = [(8, 6), (16, 12), (8, 6), (5, 5), (8, 6)]
    got = run_inputs(forward, inputs, sizes)
    want = [run_inputs(lambda b: torch.sigmoid(b[:, 0] - b[:, 1]), [x], [s])[0] for x, s in zip(inputs, sizes)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)  # SIMD tails may differ in the last bit
    assert seen == [5, 2, 3, 1, 2] and ran == [2, 1, 2]  # 5 -> 2 + 3, 3 -> 1 + 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("face_segmentation_pytorch: a batch of 5 did not fit in GPU memory; running it as 2 + 3")

    def other_error(batch):
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        run_inputs(other_error, inputs, sizes)
