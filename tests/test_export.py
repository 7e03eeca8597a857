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
    # The caller's model keeps its layout and settings.
    assert model._channels_last() and model.skip_constant_padding
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
        [sys.executable, "-m", "face_segmentation_pytorch.export", str(out), "--params-dir", str(slim_weights_dir), "--check"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "ONNX Runtime vs PyTorch: relative error" in proc.stdout
    err = float(proc.stdout.split("relative error")[-1].strip())
    assert err < 1e-4


def test_missing_onnx_is_a_clear_error(tmp_path, slim_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(FaceSegmentationError, match=r"pip install 'face_segmentation_pytorch\[onnx\]'"):
        export_onnx(slim_model, tmp_path / "x.onnx")
