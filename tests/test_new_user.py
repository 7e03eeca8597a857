"""What a new user meets: file permissions, exit statuses, folders left behind,
progress in logs and on terminals, other libraries' noise, foreign archives, wording.

Every check runs the command as the README shows it, in a subprocess.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from local_server import LocalServer
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, module: str = "face_segmentation_pytorch", umask: int | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def _photo(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), rng.integers(0, 255, (h, w))], -1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _photo(40, 30, 0).save(folder / "a.jpg")
    _photo(24, 36, 1).save(folder / "b.png")
    return folder


@pytest.fixture()
def server():
    s = LocalServer()
    yield s
    s.close()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# 1. Permissions --------------------------------------------------------------


def test_every_written_file_gets_the_umask_permissions(tmp_path, images, slim_weights_dir, server, reference_prototxt):
    """umask 027 gives -rw-r----- (not mkstemp's private 0600, nor a fixed 0644)."""
    from conftest import make_caffe_net

    want = 0o666 & ~0o027
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"a.jpg": [[0, 0, 20, 20]], "b.png": [[2, 2, 16, 16]]}')
    weights = tmp_path / "w"
    url = server.add("/w.zip", _zip({"face_seg_fcn8s.pt": (slim_weights_dir / "face_seg_fcn8s.pt").read_bytes()}))
    out = tmp_path / "out"
    proc = run(
        f"MODEL_PARAMS_DIR={weights}",
        f"IMGS_DIR={images}",
        f"OUT_DIR={out}",
        f"WEIGHTS_URL={url}",
        "OVERLAY=true",
        "CUTOUT=true",
        f"GALLERY={tmp_path / 'gallery.png'}",
        f"BOXES={boxes}",
        umask=0o027,
    )
    assert proc.returncode == 1, proc.stderr  # broken.jpg failed
    written = [
        weights / "face_seg_fcn8s.pt",
        out / "a__heatmap.png",
        out / "a__overlay.png",
        out / "a__cutout.png",
        out / "a__faces.json",
        out / "face_segmentation_failures.csv",
        tmp_path / "gallery.png",
    ]
    proc = run(
        f"MODEL_PARAMS_DIR={weights}",
        f"IMGS_DIR={images}",
        f"OUT_DIR={tmp_path / 'm'}",
        "MASK_THRESHOLD=0.5",
        umask=0o027,
    )
    written += [tmp_path / "m" / "a__mask.png"]
    for fmt, name in (("png16", "a__heatmap16.png"), ("npy", "a__heatmap.npy")):
        run(
            f"MODEL_PARAMS_DIR={weights}",
            f"IMGS_DIR={images}",
            f"OUT_DIR={tmp_path / fmt}",
            f"HEATMAP_FORMAT={fmt}",
            umask=0o027,
        )
        written.append(tmp_path / fmt / name)
    net = make_caffe_net(tmp_path / "caffe", reference_prototxt, seed=4)
    for ext in (".pt", ".safetensors"):
        target = tmp_path / f"converted{ext}"
        conv = run(
            str(net.caffemodel),
            str(target),
            *(["--safetensors"] if ext == ".safetensors" else []),
            module="face_segmentation_pytorch.convert",
            umask=0o027,
        )
        assert conv.returncode == 0, conv.stderr
        written.append(target)
    exp = run(
        str(tmp_path / "net.onnx"), "--params-dir", str(weights), module="face_segmentation_pytorch.export", umask=0o027
    )
    assert exp.returncode == 0, exp.stderr
    written.append(tmp_path / "net.onnx")
    for path in written:
        assert path.is_file(), path
        assert _mode(path) == want, f"{path.name}: {oct(_mode(path))}, expected {oct(want)}"


def test_atomic_writes_follow_the_umask_in_process(tmp_path):
    from face_segmentation_pytorch.pipeline.atomic import save_atomic

    old = os.umask(0o002)
    try:
        save_atomic(tmp_path / "x.bin", lambda f: f.write(b"1"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.bin") == 0o664
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


# 2. Exit statuses -------------------------------------------------------------


@pytest.mark.parametrize("case", ["http-404", "hash-mismatch", "unreachable", "not-a-zip"])
def test_failures_to_obtain_weights_exit_3_and_leave_no_folders(tmp_path, images, server, case):
    body = _zip({"face_seg_fcn8s/face_seg_fcn8s.caffemodel": b"\x00"})
    url = {
        "http-404": server.url("/missing.zip"),
        "hash-mismatch": server.add("/w.zip", body),
        "unreachable": "http://127.0.0.1:9/w.zip",
        "not-a-zip": server.add("/html.zip", b"<html>moved</html>"),
    }[case]
    extra = ["WEIGHTS_SHA256=" + "ab" * 32] if case == "hash-mismatch" else []
    weights, out = tmp_path / "weights", tmp_path / "outputs"
    proc = run(f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", f"OUT_DIR={out}", f"WEIGHTS_URL={url}", *extra)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
    # 4. No empty folders left by a failed run.
    assert not weights.exists() and not out.exists()


def test_unknown_weights_is_a_command_mistake_and_creates_nothing(tmp_path, images):
    weights, out = tmp_path / "weights", tmp_path / "outputs"
    proc = run(f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", f"OUT_DIR={out}", "WEIGHTS=foo")
    assert proc.returncode == 2
    assert "unknown weights 'foo'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not weights.exists() and not out.exists()


def test_existing_folders_are_kept_after_a_failed_run(tmp_path, images):
    weights, out = tmp_path / "weights", tmp_path / "outputs"
    weights.mkdir()
    out.mkdir()
    proc = run(
        f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", f"OUT_DIR={out}", "WEIGHTS_URL=http://127.0.0.1:9/w.zip"
    )
    assert proc.returncode == 3
    assert weights.is_dir() and out.is_dir()


def test_help_and_readme_list_the_same_exit_statuses_and_keys():
    from face_segmentation_pytorch.cli import KEYS
    from face_segmentation_pytorch.errors import EXIT_STATUSES

    text = run("--help").stdout
    readme = (ROOT / "docs" / "keys.md").read_text()  # the batch command's page, linked from the README
    for code in EXIT_STATUSES:
        assert re.search(rf"^\s+{code}\s+\S", text, re.M), f"--help lacks exit status {code}"
        assert re.search(rf"^\| `{code}` \|", readme, re.M), f"docs/keys.md's exit status table lacks {code}"
    table = set(re.findall(r"^\| `([A-Z_0-9]+)` \|", readme, re.M))
    assert set(KEYS) <= table, f"docs/keys.md's key table lacks {sorted(set(KEYS) - table)}"
    # The weights folder's look-up order reads the same in both.
    for step in (
        "$FACE_SEGMENTATION_PYTORCH_HOME",
        "$XDG_CACHE_HOME/face_segmentation_pytorch",
        "~/.cache/face_segmentation_pytorch",
    ):
        assert step in text.replace("\n      ", " ") and step in readme


# 5. Progress -------------------------------------------------------------------


def test_progress_in_a_log_is_plain_lines_with_the_real_file_name(tmp_path, images, slim_weights_dir, server):
    url = server.add(
        "/face_seg_fcn8s_port.zip", _zip({"face_seg_fcn8s.pt": (slim_weights_dir / "face_seg_fcn8s.pt").read_bytes()})
    )
    proc = run(f"MODEL_PARAMS_DIR={tmp_path / 'w'}", f"IMGS_DIR={images}", f"WEIGHTS_URL={url}")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    downloading = [ln for ln in lines if ln.startswith("downloading ")]
    assert downloading and all(ln.startswith("downloading face_seg_fcn8s_port.zip: ") for ln in downloading)
    assert ".download.zip" not in proc.stderr and ".partial" not in proc.stderr
    assert any(ln.startswith("segmenting: ") for ln in lines)
    assert len(lines) < 20
    quiet = run(f"MODEL_PARAMS_DIR={tmp_path / 'w'}", f"IMGS_DIR={images}", "OVERWRITE=true", "PROGRESS=false")
    assert not any(ln.startswith(("segmenting", "downloading")) for ln in quiet.stderr.splitlines())


def test_progress_on_a_terminal_is_a_bar(tmp_path, images, slim_weights_dir, server):
    import fcntl
    import pty
    import struct
    import termios

    url = server.add(
        "/face_seg_fcn8s_port.zip", _zip({"face_seg_fcn8s.pt": (slim_weights_dir / "face_seg_fcn8s.pt").read_bytes()})
    )
    master, slave = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide, and tqdm trims its bar to that.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "face_segmentation_pytorch",
            f"MODEL_PARAMS_DIR={tmp_path / 'w'}",
            f"IMGS_DIR={images}",
            f"WEIGHTS_URL={url}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    # A bar redraws in place: a carriage return not followed by a newline.
    assert re.search(r"\r(?!\n)", screen) and "downloading face_seg_fcn8s_port.zip: 100%" in screen
    assert ".download.zip" not in screen


# 6. Other libraries' noise ---------------------------------------------------------


def test_onnxruntime_backend_says_it_exports_and_hides_exporter_noise(tmp_path, images, slim_weights_dir):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "face_seg_fcn8s.pt").write_bytes((slim_weights_dir / "face_seg_fcn8s.pt").read_bytes())
    first = run(f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", "BACKEND=onnxruntime")
    assert first.returncode == 0, first.stderr
    assert "torchvision" not in first.stderr and "Skipping" not in first.stderr
    assert f"exporting the network to ONNX once, to {weights / 'face_seg_fcn8s.pt.onnx'}" in first.stderr
    again = run(f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", "BACKEND=onnxruntime", "OVERWRITE=true")
    assert again.returncode == 0 and "exporting" not in again.stderr


# 7. An archive of another weights format ----------------------------------------------


def test_archive_with_a_state_dict_for_the_caffemodel_entry_is_accepted(tmp_path, images, slim_weights_dir, server):
    """The earlier port's release (a zip holding face_seg_fcn8s.pt) as WEIGHTS_URL with WEIGHTS=fcn8s_500."""
    url = server.add(
        "/face_seg_fcn8s.zip", _zip({"face_seg_fcn8s.pt": (slim_weights_dir / "face_seg_fcn8s.pt").read_bytes()})
    )
    weights = tmp_path / "w"
    proc = run(f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", f"WEIGHTS_URL={url}", "PROGRESS=false")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in weights.iterdir()) == ["face_seg_fcn8s.pt"]


def test_archive_whose_weights_do_not_load_names_the_url_not_a_temp_file(tmp_path, images, server):
    url = server.add("/odd.zip", _zip({"face_seg_fcn8s.pt": b"garbage"}))
    proc = run(f"MODEL_PARAMS_DIR={tmp_path / 'w'}", f"IMGS_DIR={images}", f"WEIGHTS_URL={url}", "PROGRESS=false")
    assert proc.returncode == 3
    last = proc.stderr.splitlines()[-1]
    assert url in last and "face_seg_fcn8s.pt" in last and "WEIGHTS" in last
    assert "unverified" not in last and "/." not in last


# 8. Wording ---------------------------------------------------------------------------


def test_no_arguments_says_imgs_dir_is_required():
    proc = run()
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: IMGS_DIR is required") and "None" not in proc.stderr


def test_one_image_and_no_rate_without_work(tmp_path, slim_weights_dir):
    folder = tmp_path / "one"
    folder.mkdir()
    _photo(16, 16, 3).save(folder / "x.png")
    ok = run(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={folder}", "PROGRESS=false")
    assert ok.returncode == 0
    assert ok.stderr.splitlines()[0].startswith("face_segmentation_pytorch: 1 image from ")
    assert "1 image done, 0 failed" in ok.stderr.splitlines()[-1] and "images/s" in ok.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "y.png").write_bytes(b"\x89PNG broken")
    fail = run(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={bad}", "PROGRESS=false")
    assert fail.returncode == 1
    last = fail.stderr.splitlines()[-1]
    assert "0 images done, 1 failed" in last and "images/s" not in last
    rows = list(csv.reader((bad / "face_segmentation_failures.csv").open()))
    assert rows[0] == ["path", "stage", "reason"]
    assert rows[1][0] == str(bad / "y.png") and rows[1][1] == "read"
    assert str(bad / "y.png") not in rows[1][2] and rows[1][2]
