"""LinkNet34 behind the same API and CLI as FCN-8s.

Checkpoints are written in the OneFlow layouts by the tests' own writer
(``test_linknet.write_checkpoint``), and every expected map is computed here
from the facts of the notes, with the float64 functional forward of
``test_linknet.reference_forward``: RGB, Pillow bilinear resize to 256x256,
/255, ImageNet mean and std, sigmoid of the one logit, bilinear resize back
(half-pixel centres), 8-bit heatmap = round(255 p).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from local_server import LocalServer
from PIL import Image
from test_linknet import random_state, reference_forward, write_checkpoint

import face_segmentation_pytorch as fsp

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def run_cli(*args: str, module: str = "face_segmentation_pytorch") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def _photo(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    blob = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 8)
    rgb = np.stack([200 * blob + 30 * xx, 120 * yy + 60 * blob, 80 + 100 * xx * yy], -1)
    rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def expected_pmap(
    state, img: Image.Image, *, size=256, mean=IMAGENET_MEAN * 255, std=IMAGENET_STD * 255, swap=False, native=False
) -> np.ndarray:
    arr = np.asarray(img.convert("RGB"))
    if swap:
        arr = arr[:, :, ::-1].copy()
    h, w = arr.shape[:2]
    if native:
        small = arr
    else:
        small = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    x = (small.astype(np.float64) - mean) / std
    x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    if native:  # pad to multiples of 32 with zeros (the mean), crop the map back
        ph, pw = -h % 32, -w % 32
        x = F.pad(x, (0, pw, 0, ph))
    p = torch.sigmoid(reference_forward(state, x))[:, :1]
    if native:
        p = p[:, :, :h, :w]
    p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return p[0, 0].numpy()


def _heat(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


@pytest.fixture(scope="module")
def state():
    # Scale the last layer so that probabilities spread over (0, 1) instead of
    # sitting near one value: masks then cover part of each image.
    sd = random_state(seed=3)
    sd["finalconv3.weight"] *= 40.0
    return sd


@pytest.fixture(scope="module")
def eager_params(tmp_path_factory, state) -> Path:
    folder = tmp_path_factory.mktemp("eager_params")
    write_checkpoint(folder / "linknet_oneflow_model", state)
    return folder


@pytest.fixture(scope="module")
def lazy_params(tmp_path_factory, state) -> Path:
    folder = tmp_path_factory.mktemp("lazy_params")
    write_checkpoint(folder / "linknet_oneflow_model", state, layout="lazy", meta=False, training_extras=True)
    return folder


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _photo(120, 90, 0).save(folder / "portrait.png")
    _photo(64, 200, 1).save(folder / "wide.png")
    return folder


@pytest.mark.parametrize("layout", ["eager", "lazy"])
def test_cli_runs_a_oneflow_folder_and_equals_the_independent_pipeline(
    layout, eager_params, lazy_params, images, state, tmp_path
):
    params = eager_params if layout == "eager" else lazy_params
    out = tmp_path / "out"
    proc = run_cli(f"MODEL_PARAMS_DIR={params}", f"IMGS_DIR={images}", "WEIGHTS=linknet34_oneflow", f"OUT_DIR={out}")
    assert proc.returncode == 0, proc.stderr
    assert "input size 256" in proc.stderr and str(params / "linknet_oneflow_model") in proc.stderr
    for name in ("portrait", "wide"):
        want = np.floor(expected_pmap(state, Image.open(images / f"{name}.png")) * 255 + 0.5)
        got = _heat(out / f"{name}__heatmap.png")
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1
        assert got.max() - got.min() > 50  # the map varies: a wrong forward could not match it


def test_segmenter_masks_and_native_size(eager_params, state):
    img = _photo(100, 70, 5)
    seg = fsp.FaceSegmenter("linknet34_oneflow", params_dir=eager_params, device="cpu", threshold=0.5)
    want = expected_pmap(state, img)
    got = seg.segment(img)
    np.testing.assert_allclose(got.pmap, want, atol=2e-5)
    sure = np.abs(want - 0.5) > 1e-4
    np.testing.assert_array_equal(got.mask[sure], (want > 0.5)[sure])
    assert 0 < got.mask.sum() < got.mask.size
    # Native size: padded to multiples of 32, the padding cropped off.
    native = fsp.FaceSegmenter("linknet34_oneflow", params_dir=eager_params, device="cpu", input_size=None)
    np.testing.assert_allclose(native.segment(img).pmap, expected_pmap(state, img, native=True), atol=2e-5)


def test_demo_entry_reproduces_the_oneflow_demo_channel_quirk(eager_params, state):
    img = _photo(80, 80, 6)
    seg = fsp.FaceSegmenter("linknet34_oneflow_demo", params_dir=eager_params, device="cpu", threshold=None)
    want = expected_pmap(
        state, img, swap=True, mean=np.array([123.68, 116.779, 103.939]), std=np.array([58.393, 57.12, 57.375])
    )
    np.testing.assert_allclose(seg.segment(img).pmap, want, atol=2e-5)
    plain = fsp.FaceSegmenter("linknet34_oneflow", params_dir=eager_params, device="cpu", threshold=None)
    assert np.abs(plain.segment(img).pmap - want).max() > 1e-3  # the quirk is not the default


def test_user_mistakes_for_linknet(eager_params, images):
    bad_size = run_cli(
        f"MODEL_PARAMS_DIR={eager_params}", f"IMGS_DIR={images}", "WEIGHTS=linknet34_oneflow", "INPUT_SIZE=250"
    )
    assert bad_size.returncode == 2 and "multiples of 32" in bad_size.stderr
    channel = run_cli(
        f"MODEL_PARAMS_DIR={eager_params}", f"IMGS_DIR={images}", "WEIGHTS=linknet34_oneflow", "FACE_CHANNEL=1"
    )
    assert channel.returncode == 2 and "FACE_CHANNEL=1" in channel.stderr and "one face logit" in channel.stderr
    for proc in (bad_size, channel):
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_everything_the_cli_does_works_for_linknet(eager_params, images, state, tmp_path):
    """Batches of mixed sizes, boxes, post-processing, overlays, cut-outs, the failure CSV, resume."""
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"portrait.png": [[10, 20, 64, 64]], "wide.png": [[0, 0, 200, 64]]}))
    out = tmp_path / "out"
    args = [
        f"MODEL_PARAMS_DIR={eager_params}",
        f"IMGS_DIR={images}",
        "WEIGHTS=linknet34_oneflow",
        f"OUT_DIR={out}",
        "BATCH_SIZE=2",
        "MASK_THRESHOLD=0.5",
        "POSTPROCESS=largest",
        "OVERLAY=true",
        "CUTOUT=true",
        f"BOXES={boxes}",
        "PER_FACE=true",
    ]
    first = run_cli(*args)
    assert first.returncode == 1, first.stderr  # broken.png
    assert "2 images done, 1 failed" in first.stderr.splitlines()[-1]
    assert (out / "face_segmentation_failures.csv").read_text().count("broken.png") == 1
    for name in ("portrait", "wide"):
        for kind in ("__mask.png", "__overlay.png", "__cutout.png", "__faces.json", "__face0__mask.png"):
            assert (out / f"{name}{kind}").is_file(), name + kind
    # The portrait's mask is its box's crop segmented on its own, pasted back.
    crop = Image.open(images / "portrait.png").crop((10, 20, 74, 84))
    want = expected_pmap(state, crop) > 0.5
    from face_segmentation_pytorch.pipeline.postprocess import largest_component

    mask = np.asarray(Image.open(out / "portrait__mask.png")) > 0
    inside = mask[20:84, 10:74]
    assert not mask.sum() - inside.sum()  # nothing outside the box
    agree = (inside == largest_component(want)).mean()
    assert agree > 0.995, agree
    again = run_cli(*args)
    assert "0 images done, 1 failed, 2 skipped" in again.stderr.splitlines()[-1]


def test_onnxruntime_backend_and_export_for_linknet(eager_params, images, tmp_path):
    torch_out, ort_out = tmp_path / "torch", tmp_path / "ort"
    a = run_cli(
        f"MODEL_PARAMS_DIR={eager_params}", f"IMGS_DIR={images}", "WEIGHTS=linknet34_oneflow", f"OUT_DIR={torch_out}"
    )
    b = run_cli(
        f"MODEL_PARAMS_DIR={eager_params}",
        f"IMGS_DIR={images}",
        "WEIGHTS=linknet34_oneflow",
        f"OUT_DIR={ort_out}",
        "BACKEND=onnxruntime",
    )
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    for name in ("portrait", "wide"):
        assert np.abs(_heat(torch_out / f"{name}__heatmap.png") - _heat(ort_out / f"{name}__heatmap.png")).max() <= 1
    exported = run_cli(
        str(tmp_path / "linknet.onnx"),
        "--params-dir",
        str(eager_params),
        "--weights",
        "linknet34_oneflow",
        "--check",
        module="face_segmentation_pytorch.export",
    )
    assert exported.returncode == 0, exported.stderr
    err = float(exported.stdout.split("relative error")[1].split()[0])
    assert err < 1e-5


def test_published_zip_downloads_installs_and_is_found_next_time(tmp_path, state, images):
    src = write_checkpoint(tmp_path / "src" / "linknet_oneflow_model", state)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # the published zip's inner layout is unknown: one folder down
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, "linknet_oneflow_model/" + p.relative_to(src).as_posix())
    server = LocalServer()
    try:
        url = server.add("/linknet_oneflow_model.zip", buf.getvalue())
        params = tmp_path / "params"
        first = run_cli(
            f"MODEL_PARAMS_DIR={params}", f"IMGS_DIR={images}", "WEIGHTS=linknet34_oneflow", f"WEIGHTS_URL={url}"
        )
        assert first.returncode == 0, first.stderr
        assert sorted(p.name for p in params.iterdir()) == ["linknet_oneflow_model.pt"]
        loaded = torch.load(params / "linknet_oneflow_model.pt", weights_only=True)
        for k, v in state.items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(loaded[k], v), k
        again = run_cli(
            f"MODEL_PARAMS_DIR={params}",
            f"IMGS_DIR={images}",
            "WEIGHTS=linknet34_oneflow",
            f"WEIGHTS_URL={url}",
            "OVERWRITE=true",
        )
        assert again.returncode == 0 and server.hits == ["/linknet_oneflow_model.zip"]
    finally:
        server.close()


def test_weights_file_runs_a_baseline_state_dict(tmp_path, state, images):
    """The PyTorch baseline's linknet.pth (its own names) through WEIGHTS_FILE."""
    pth = tmp_path / "linknet.pth"
    torch.save(dict(state), pth)
    out = tmp_path / "out"
    proc = run_cli(
        f"IMGS_DIR={images}",
        "WEIGHTS=linknet34_oneflow",
        f"WEIGHTS_FILE={pth}",
        f"OUT_DIR={out}",
        f"MODEL_PARAMS_DIR={tmp_path / 'unused'}",
    )
    assert proc.returncode == 0, proc.stderr
    want = np.floor(expected_pmap(state, Image.open(images / "wide.png")) * 255 + 0.5)
    assert np.abs(_heat(out / "wide__heatmap.png") - want).max() <= 1
    assert not (tmp_path / "unused").exists()
    fcn_file = run_cli(f"IMGS_DIR={images}", "WEIGHTS=fcn8s_500", f"WEIGHTS_FILE={pth}")
    assert fcn_file.returncode == 3 and "not weights of the FCN-8s" in fcn_file.stderr


def test_load_model_parameters_fills_a_linknet(eager_params, state):
    model = fsp.LinkNet34()
    entry = fsp.load_model_parameters(model, eager_params)
    assert entry.name == "linknet34_oneflow" and entry.family == "linknet34"
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(fsp.WeightsError, match="linknet34 weights, but the model is a fcn8s"):
        fsp.load_model_parameters(
            fsp.FaceSegmentationNet(channel_divisor=16), eager_params, weights="linknet34_oneflow"
        )
