"""Weight lookup, verified downloads from a real HTTP server on 127.0.0.1, and loading."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from caffe_writer import caffemodel_bytes, random_layers
from local_server import LocalServer

from face_segmentation_pytorch import (
    DownloadError,
    FaceSegmentationNet,
    WeightsError,
    default_params_dir,
    find_or_download_state_dict,
    load_model_parameters,
)
from face_segmentation_pytorch.pipeline.download import download_url_to_file, extract_zip_member


@pytest.fixture()
def server():
    s = LocalServer()
    yield s
    s.close()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _slim_state_bytes(num_classes=21, divisor=16):
    buf = io.BytesIO()
    torch.manual_seed(1)
    torch.save(FaceSegmentationNet(num_classes, channel_divisor=divisor).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def slim_caffemodel_zip() -> bytes:
    return _zip({"face_seg_fcn8s/face_seg_fcn8s.caffemodel": caffemodel_bytes(random_layers(21, 16, seed=2))})


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_hash_and_moves_into_place(server, tmp_path):
    body = b"x" * 300_000
    url = server.add("/f.bin", body)
    digest = download_url_to_file(url, tmp_path / "f.bin", sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert digest == hashlib.sha256(body).hexdigest()
    assert (tmp_path / "f.bin").read_bytes() == body
    assert _leftovers(tmp_path) == ["f.bin"]


def test_wrong_hash_states_both_and_leaves_nothing(server, tmp_path):
    url = server.add("/f.bin", b"payload")
    with pytest.raises(DownloadError) as e:
        download_url_to_file(url, tmp_path / "f.bin", sha256="0" * 64, progress=False)
    assert "expected " + "0" * 64 in str(e.value)
    assert hashlib.sha256(b"payload").hexdigest() in str(e.value)
    assert _leftovers(tmp_path) == []


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url_to_file(server.url("/missing.zip"), tmp_path / "m.zip", progress=False)
    assert _leftovers(tmp_path) == []


def test_truncated_body_is_detected(server, tmp_path):
    url = server.add("/cut.zip", b"y" * 10_000, truncate=True)
    with pytest.raises(DownloadError, match="10000|stopped"):
        download_url_to_file(url, tmp_path / "cut.zip", progress=False)
    assert _leftovers(tmp_path) == []


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="failed"):
        download_url_to_file("http://127.0.0.1:9/none.zip", tmp_path / "n.zip", progress=False, timeout=5)


def test_zip_slip_entry_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"../../escape.caffemodel": b"x", "ok.caffemodel": b"y"}))
    dest = tmp_path / "out" / "w.caffemodel"
    with pytest.raises(DownloadError, match="refusing.*escape"):
        extract_zip_member(archive, dest, member="ok.caffemodel", suffix=".caffemodel")
    assert not (tmp_path.parent / "escape.caffemodel").exists()
    assert _leftovers(tmp_path / "out") == []


def test_corrupt_zip_member_is_refused(tmp_path):
    data = bytearray(_zip({"w.caffemodel": bytes(range(256)) * 400}))
    data[60:90] = b"\x00" * 30  # inside the compressed data
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="corrupt|not a valid zip"):
        extract_zip_member(archive, tmp_path / "w.caffemodel", member="w.caffemodel", suffix=".caffemodel")
    assert _leftovers(tmp_path) == ["bad.zip"]


def test_download_and_load_caffemodel_release(server, tmp_path, slim_caffemodel_zip, capsys):
    url = server.add("/face_seg_fcn8s.zip", slim_caffemodel_zip)
    sha = hashlib.sha256(slim_caffemodel_zip).hexdigest()
    model = FaceSegmentationNet(21, channel_divisor=16)
    entry = load_model_parameters(model, tmp_path / "w", url=url, sha256=sha, progress=False)
    assert entry.name == "fcn8s_500" and model.input_size == 500
    assert _leftovers(tmp_path / "w") == ["face_seg_fcn8s.caffemodel"]
    # A second load finds the file and does not download again.
    load_model_parameters(FaceSegmentationNet(21, channel_divisor=16), tmp_path / "w", url=url, progress=False)
    assert server.hits == ["/face_seg_fcn8s.zip"]


def test_download_without_pinned_hash_prints_digest(server, tmp_path, slim_caffemodel_zip, capsys):
    url = server.add("/w.zip", slim_caffemodel_zip)
    find_or_download_state_dict(tmp_path, url=url, progress=False)
    err = capsys.readouterr().err
    assert f"WEIGHTS_SHA256={hashlib.sha256(slim_caffemodel_zip).hexdigest()}" in err


@pytest.mark.parametrize(
    "body, match",
    [
        (b"this is not a zip file at all", "not a valid zip"),
        (_zip({"readme.txt": b"hi"}), "expected face_seg_fcn8s/face_seg_fcn8s.caffemodel"),
        (_zip({"face_seg_fcn8s/face_seg_fcn8s.caffemodel": b"\xff\xff\xff"}), "not a readable caffemodel"),
        (_zip({"../face_seg_fcn8s.caffemodel": b"x"}), "refusing"),
    ],
    ids=["not-zip", "no-member", "bad-caffemodel", "zip-slip"],
)
def test_bad_archives_leave_nothing_and_never_load_untrained(server, tmp_path, body, match):
    url = server.add("/w.zip", body)
    model = FaceSegmentationNet(21, channel_divisor=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=match):
        load_model_parameters(model, tmp_path / "w", url=url, progress=False)
    assert _leftovers(tmp_path / "w") == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_state_dict_release_of_wrong_class_count_is_refused(server, tmp_path):
    url = server.add("/p.zip", _zip({"face_seg_fcn8s.pt": _slim_state_bytes(2)}))
    with pytest.raises(WeightsError, match="2-class net"):
        find_or_download_state_dict(tmp_path, weights="fcn8s_500_port", url=url, progress=False)
    assert _leftovers(tmp_path) == []


def test_local_lookup_order_prefers_state_dict(tmp_path, slim_weights_dir):
    (tmp_path / "face_seg_fcn8s.caffemodel").write_bytes(b"broken, must not be read")
    (tmp_path / "face_seg_fcn8s.pt").write_bytes((slim_weights_dir / "face_seg_fcn8s.pt").read_bytes())
    _, path = find_or_download_state_dict(tmp_path)
    assert path.name == "face_seg_fcn8s.pt"
    (tmp_path / "face_seg_fcn8s.pt").unlink()
    with pytest.raises(WeightsError, match="face_seg_fcn8s.caffemodel: not a readable caffemodel"):
        find_or_download_state_dict(tmp_path)


def test_safetensors_file_is_found(tmp_path, slim_weights_dir):
    from safetensors.torch import save_file

    sd = torch.load(slim_weights_dir / "face_seg_fcn8s.pt", weights_only=True)
    save_file(sd, str(tmp_path / "face_seg_fcn8s.safetensors"))
    state, path = find_or_download_state_dict(tmp_path)
    assert path.suffix == ".safetensors" and all(torch.equal(state[k], sd[k]) for k in sd)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "face_seg_fcn8s.pt")
    with pytest.raises(WeightsError, match="not a state_dict saved with torch.save"):
        find_or_download_state_dict(tmp_path)


def test_wrong_shapes_in_local_state_dict(tmp_path):
    sd = FaceSegmentationNet(21, channel_divisor=16).state_dict()
    sd["fc7.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "face_seg_fcn8s.pt")
    with pytest.raises(WeightsError, match=r"'fc7.weight' has shape \(3, 3\), expected \(256, 256, 1, 1\)"):
        find_or_download_state_dict(tmp_path)


def test_two_class_weights_load_into_default_model(tmp_path):
    torch.save(FaceSegmentationNet(2, channel_divisor=16).state_dict(), tmp_path / "face_seg_fcn8s.pt")
    model = FaceSegmentationNet(channel_divisor=16)
    entry = load_model_parameters(model, tmp_path)
    assert model.num_classes == 2 and entry.name == "fcn8s_300_no_aug" and model.input_size == 300
    assert model(torch.zeros(1, 3, 9, 9)).shape == (1, 2, 9, 9)


def test_face_channel_that_the_weights_lack_is_refused(tmp_path):
    torch.save(FaceSegmentationNet(2, channel_divisor=16).state_dict(), tmp_path / "face_seg_fcn8s.pt")
    model = FaceSegmentationNet(channel_divisor=16, face_channel=15)
    with pytest.raises(ValueError, match="face_channel=15 does not exist in a 2-class model"):
        load_model_parameters(model, tmp_path)


def test_width_mismatch_is_explained(tmp_path, slim_weights_dir):
    with pytest.raises(WeightsError, match="from_state_dict"):
        load_model_parameters(FaceSegmentationNet(channel_divisor=8), slim_weights_dir)


def test_default_params_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FACE_SEGMENTATION_PYTORCH_HOME", str(tmp_path / "home"))
    assert default_params_dir() == tmp_path / "home"
    monkeypatch.delenv("FACE_SEGMENTATION_PYTORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_params_dir() == tmp_path / "xdg" / "face_segmentation_pytorch"


@pytest.mark.slow
def test_seed_readme_example_runs(tmp_path, full_weights_dir):
    """The seed README's Python example, unchanged but for the paths, on the full-size net."""
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 90, 60)).save(tmp_path / "face.png")
    code = f"""
import torch
from PIL import Image
import face_segmentation_pytorch as fsp
MODEL_PARAMS_DIR, IMAGE_PATH = {str(full_weights_dir)!r}, {str(tmp_path / "face.png")!r}
model = fsp.FaceSegmentationNet()
fsp.load_model_parameters(model, MODEL_PARAMS_DIR)
model.eval()
img = Image.open(IMAGE_PATH).convert("RGB")
with torch.no_grad():
    t = model.img_to_input(img, pre_normalize=True).unsqueeze(0)
    out = model(t, as_pmap=True)[0]
assert out.shape == (30, 40) and 0 <= float(out.min()) and float(out.max()) <= 1, out.shape
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
