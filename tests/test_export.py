"""ONNX export: the graph in ONNX Runtime equals PyTorch, at dynamic sizes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from face_segmentation_pytorch import FaceSegmentationError, FaceSegmentationNet
from face_segmentation_pytorch.export import check_onnx, export_onnx


@pytest.fixture(scope="module")
def slim_model(slim_weights_dir):
    return FaceSegmentationNet.from_state_dict(
        torch.load(slim_weights_dir / "face_seg_fcn8s.pt", weights_only=True)
    ).eval()


def test_exported_graph_equals_pytorch(tmp_path, slim_model):
    model = slim_model.to(memory_format=torch.channels_last)
    path = export_onnx(model, tmp_path / "net.onnx")
    # The caller's model keeps its layout and settings, parameter by parameter.
    assert model._channels_last() and model.fast_inference
    assert not model.fc6.weight.is_contiguous()  # .to() made it channels-last too
    layouts = {n: p.stride() for n, p in model.named_parameters()}
    export_onnx(model.channels_last_(), tmp_path / "again.onnx")
    assert {n: p.stride() for n, p in model.named_parameters()} == layouts
    assert check_onnx(model, path, sizes=((1, 1), (61, 47), (500, 500))) < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    out = session.run(["score"], {"data": np.zeros((3, 3, 33, 20), np.float32)})[0]
    assert out.shape == (3, 21, 33, 20)
    assert not list(tmp_path.glob("*.partial"))


def test_export_command(tmp_path, slim_weights_dir):
    out = tmp_path / "cli.onnx"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "face_segmentation_pytorch.export",
            str(out),
            "--params-dir",
            str(slim_weights_dir),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "ONNX Runtime vs PyTorch: relative error" in proc.stdout
    err = float(proc.stdout.split("relative error")[-1].strip())
    assert err < 1e-4


def test_missing_onnx_is_a_clear_error(tmp_path, slim_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(FaceSegmentationError, match=r"pip install 'face_segmentation_pytorch\[onnx\]'"):
        export_onnx(slim_model, tmp_path / "x.onnx")


@pytest.fixture()
def smooth_photo(tmp_path):
    from PIL import Image

    yy, xx = np.mgrid[0:90, 0:120]
    img = np.stack([xx * 2, yy * 2, 255 - xx], -1).clip(0, 255).astype(np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(img).save(path)
    return path


def test_onnxruntime_backend_equals_torch_backend(tmp_path, slim_weights_dir, smooth_photo):
    import face_segmentation_pytorch as fsp

    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "face_seg_fcn8s.pt").write_bytes((slim_weights_dir / "face_seg_fcn8s.pt").read_bytes())
    torch_seg = fsp.FaceSegmenter(params_dir=wdir, device="cpu")
    ort_seg = fsp.FaceSegmenter(params_dir=wdir, device="cpu", backend="onnxruntime")
    assert ort_seg.onnx_path == wdir / "face_seg_fcn8s.pt.onnx" and ort_seg.onnx_path.exists()
    a, b = torch_seg.segment(smooth_photo), ort_seg.segment(smooth_photo)
    np.testing.assert_allclose(a.pmap, b.pmap, atol=1e-5)
    # The export is reused, not redone.
    stamp = ort_seg.onnx_path.stat().st_mtime_ns
    fsp.FaceSegmenter(params_dir=wdir, device="cpu", backend="onnxruntime")
    assert ort_seg.onnx_path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="backend must be"):
        fsp.FaceSegmenter(params_dir=wdir, backend="tensorrt")
    # The CLI with BACKEND=onnxruntime writes what the torch backend writes, to rounding.
    out_t, out_o = tmp_path / "t", tmp_path / "o"
    for backend, out in (("torch", out_t), ("onnxruntime", out_o)):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "face_segmentation_pytorch",
                f"MODEL_PARAMS_DIR={wdir}",
                f"IMGS_DIR={smooth_photo.parent}",
                f"OUT_DIR={out}",
                f"BACKEND={backend}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
    from PIL import Image

    ht = np.asarray(Image.open(out_t / "p__heatmap.png")).astype(int)
    ho = np.asarray(Image.open(out_o / "p__heatmap.png")).astype(int)
    assert np.abs(ht - ho).max() <= 1
