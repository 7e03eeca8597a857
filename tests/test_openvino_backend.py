"""BACKEND=openvino as a user runs it: the batch command, the video command and the API.

OpenVINO runs the same ONNX export as ONNX Runtime. What it must never do is
pick a precision by itself (on a CPU with bfloat16 units it runs bfloat16
unless told): fp32 here is checked against the torch backend and against the
independent float64 forward of the tests (``test_linknet.reference_forward``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino", reason="the [openvino] extra is a test requirement (requirements-test.txt)")

from PIL import Image  # noqa: E402
from test_linknet import random_state, write_checkpoint  # noqa: E402
from test_linknet_pipeline import _photo, expected_pmap  # noqa: E402

import face_segmentation_pytorch as fsp  # noqa: E402
from face_segmentation_pytorch.segmentation import precision as precision_module  # noqa: E402


def run_cli(*args: str, module: str = "face_segmentation_pytorch") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def _heat(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


@pytest.fixture(scope="module")
def state():
    sd = random_state(seed=5)
    sd["finalconv3.weight"] *= 40.0  # probabilities spread over (0, 1): masks with edges
    return sd


@pytest.fixture(scope="module")
def params(tmp_path_factory, state) -> Path:
    folder = tmp_path_factory.mktemp("ov_params")
    write_checkpoint(folder / "linknet_oneflow_model", state)
    return folder


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(120, 90, 0).save(folder / "portrait.png")
    _photo(64, 200, 1).save(folder / "wide.jpg", quality=90)  # a phone's JPEG
    return folder


def test_batch_command_with_openvino_writes_what_the_network_computes_and_resumes(params, photos, state, tmp_path):
    common = (f"MODEL_PARAMS_DIR={params}", f"IMGS_DIR={photos}", "WEIGHTS=linknet34_oneflow")
    runs = {}
    for backend in ("torch", "openvino"):
        for kind, keys in (("heat", ()), ("mask", ("MASK_THRESHOLD=0.5",))):
            out = tmp_path / f"{backend}_{kind}"
            proc = run_cli(*common, *keys, f"OUT_DIR={out}", f"BACKEND={backend}")
            assert proc.returncode == 0, proc.stderr
            # The start line names the runtime and the precision its compiled network reports.
            assert ("(OpenVINO 20" in proc.stderr) == (backend == "openvino"), proc.stderr
            assert ("inference precision f32)" in proc.stderr) == (backend == "openvino"), proc.stderr
            runs[backend, kind] = out
    # The graph OpenVINO ran was exported once, beside the weights.
    assert (params / "linknet_oneflow_model.onnx").is_file()
    for name in ("portrait", "wide"):
        want = np.rint(255 * expected_pmap(state, Image.open(next(photos.glob(name + ".*"))))).astype(int)
        got = _heat(runs["openvino", "heat"] / f"{name}__heatmap.png")
        assert np.abs(got - want).max() <= 1, name
        assert np.abs(got - _heat(runs["torch", "heat"] / f"{name}__heatmap.png")).max() <= 1, name
        ov_mask = _heat(runs["openvino", "mask"] / f"{name}__mask.png")
        assert 0 < (ov_mask > 0).mean() < 1, name  # a mask with edges, not all or nothing
        assert np.array_equal(ov_mask, _heat(runs["torch", "mask"] / f"{name}__mask.png")), name
    # BACKEND computes the same outputs, so it is no reason to redo them: a photo
    # added to the folder and a rerun with the torch backend do the new one only.
    _photo(80, 80, 2).save(photos / "new.png")
    again = run_cli(*common, f"OUT_DIR={runs['openvino', 'heat']}")
    assert again.returncode == 0, again.stderr
    assert "2 already done" in again.stderr and (runs["openvino", "heat"] / "new__heatmap.png").is_file()


def test_video_command_with_openvino_keeps_the_sound_and_masks_every_frame(params, tmp_path):
    pytest.importorskip("av", reason="the video command needs the [video] extra")
    from video_clips import make_clip, probe

    clip = make_clip(tmp_path / "phone.mp4", size=(96, 64), n=12)
    masks = {}
    for backend in ("torch", "openvino"):
        out, mdir = tmp_path / f"{backend}.mp4", tmp_path / f"{backend}_masks"
        proc = run_cli(
            f"SOURCE={clip.path}",
            f"OUT={out}",
            f"MASKS_DIR={mdir}",
            f"MODEL_PARAMS_DIR={params}",
            "WEIGHTS=linknet34_oneflow",
            f"BACKEND={backend}",
            "PROGRESS=false",
            module="face_segmentation_pytorch.video",
        )
        assert proc.returncode == 0, proc.stderr
        got = probe(out)
        assert len(got.times) == 12 and got.sound == ["aac"]
        masks[backend] = {p.name: np.asarray(Image.open(p)) for p in sorted(mdir.glob("*.png"))}
    assert re.search(r"\(OpenVINO [0-9.]+, inference precision f32\)", proc.stderr), proc.stderr
    assert len(masks["openvino"]) == 12 and masks["openvino"].keys() == masks["torch"].keys()
    differ = sum(int((masks["openvino"][k] != masks["torch"][k]).sum()) for k in masks["torch"])
    assert differ == 0


def test_fcn8s_through_openvino_equals_torch_in_fp32(tmp_path, slim_weights_dir):
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "face_seg_fcn8s.pt").write_bytes((slim_weights_dir / "face_seg_fcn8s.pt").read_bytes())
    rgb = np.asarray(_photo(90, 120, 3))
    ref = fsp.FaceSegmenter(params_dir=wdir, device="cpu", threshold=None).segment(rgb).pmap
    seg = fsp.FaceSegmenter(params_dir=wdir, backend="openvino", threshold=None)
    assert seg.device.type == "cpu" and seg.onnx_path == wdir / "face_seg_fcn8s.pt.onnx"
    assert seg.runtime.startswith("OpenVINO ") and seg.runtime.endswith("inference precision f32")
    stamp = seg.onnx_path.stat().st_mtime_ns
    fsp.FaceSegmenter(params_dir=wdir, backend="openvino")
    assert seg.onnx_path.stat().st_mtime_ns == stamp  # the export is reused, not redone
    np.testing.assert_allclose(seg.segment(rgb).pmap, ref, atol=1e-5)
    # A batch of different sizes runs through the one dynamic-shape model.
    outs = seg.segment([rgb, rgb[:50, :70]])
    np.testing.assert_allclose(outs[0].pmap, ref, atol=1e-5)
    assert outs[1].pmap.shape == (50, 70)


def test_openvino_mistakes_are_one_line_each(params, photos, tmp_path):
    common = (f"MODEL_PARAMS_DIR={params}", f"IMGS_DIR={photos}", "WEIGHTS=linknet34_oneflow", "BACKEND=openvino")
    for extra, words in (
        (("PRECISION=fp16",), "BACKEND=openvino runs fp32 or bf16; use BACKEND=torch for fp16"),
        (("BACKEND=tensorrt",), "expected torch, onnxruntime or openvino"),
        (("COMPILE=true",), "torch.compile applies to BACKEND=torch"),
    ):
        proc = run_cli(*common, f"OUT_DIR={tmp_path / 'out'}", *extra)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if not precision_module._cpu_has_native_bf16():
        proc = run_cli(*common, f"OUT_DIR={tmp_path / 'out'}", "PRECISION=bf16")
        assert proc.returncode != 0 and "native bfloat16" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    # Without the extra: one line that names it (openvino made unimportable in a child).
    code = (
        "import sys; sys.modules['openvino'] = None; "
        "from face_segmentation_pytorch.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *common, f"OUT_DIR={tmp_path / 'out2'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "pip install 'face_segmentation_pytorch[openvino]'" in proc.stderr
    # Said before the one-off ONNX export, which would take seconds for nothing; nothing written.
    assert "exporting" not in proc.stderr and not (tmp_path / "out2").exists()


@pytest.mark.skipif(
    not precision_module._cpu_has_native_bf16(),
    reason="OpenVINO runs bfloat16 only where the CPU has it (AVX-512 BF16 or AMX); this one has not",
)
def test_openvino_bf16_where_the_cpu_has_it_stays_close_to_fp32(params):
    rgb = np.asarray(_photo(120, 90, 4))
    kw = dict(params_dir=params, threshold=None)
    ref = fsp.FaceSegmenter("linknet34_oneflow", device="cpu", **kw).segment(rgb).pmap
    half = fsp.FaceSegmenter("linknet34_oneflow", backend="openvino", precision="bf16", **kw).segment(rgb).pmap
    # The same bound as the torch backend's bf16 (tests/test_cpu_paths.py).
    assert np.abs(half - ref).max() < 0.1
    cut = np.median(ref)
    assert ((half > cut) != (ref > cut)).mean() < 0.01
    assert not torch.equal(torch.from_numpy(half), torch.from_numpy(ref))  # bf16 really ran
