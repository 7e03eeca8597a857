"""The weights files and the weights commands as a user meets them (issue 22, items 9, 10, 12 and 13).

Each item's commands run as subprocesses, as a user types them, on real files
(further spellings of the same mistake call the command's ``main`` in this
process, to spare a Python start-up each); downloads come from a real HTTP
server on 127.0.0.1, and "offline" is a server that has been shut down
(connection refused).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import io
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_writer import caffemodel_bytes, random_layers
from local_server import LocalServer
from PIL import Image
from test_linknet import random_state, write_checkpoint, zip_folder

from face_segmentation_pytorch import (
    FaceSegmentationNet,
    WeightsError,
    find_or_download_state_dict,
)
from face_segmentation_pytorch.convert import main as convert_main
from face_segmentation_pytorch.export import main as export_main
from face_segmentation_pytorch.pipeline.weights import read_torch_state_dict

ROOT = Path(__file__).resolve().parent.parent

#: setup.py's console scripts: one per command.
CONSOLE_SCRIPTS = {
    "face-segmentation": "face_segmentation_pytorch.cli:main",
    "face-segmentation-video": "face_segmentation_pytorch.video:main",
    "face-segmentation-train": "face_segmentation_pytorch.train:main",
    "face-segmentation-evaluate": "face_segmentation_pytorch.evaluate:main",
    "face-segmentation-convert": "face_segmentation_pytorch.convert:main",
    "face-segmentation-export": "face_segmentation_pytorch.export:main",
    "face-segmentation-label": "face_segmentation_pytorch.label.command:main",
}


def run(*args, module: str = "face_segmentation_pytorch", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m module args...`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def convert(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run(*args, module="face_segmentation_pytorch.convert", cwd=cwd)


def export(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run(*args, module="face_segmentation_pytorch.export", cwd=cwd)


def in_process(main, argv, cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """A command's ``main(argv)`` run in this process from ``cwd``, as a CompletedProcess (saves a
    Python start-up where the subprocess path is covered by another test)."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line a failed command ends with (no traceback anywhere)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert sum(line.startswith("error") for line in lines) == 1, proc.stderr
    return lines[-1]


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def down_url() -> str:
    """The URL of a server that was running and is now down: every request is refused."""
    server = LocalServer()
    url = server.url("/face_seg_fcn8s.zip")
    server.close()
    return url


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([xx * 3, yy * 4, 200 - xx], -1).clip(0, 255).astype(np.uint8)).save(folder / "a.png")
    return folder


@pytest.fixture(scope="module")
def layers():
    """A slim (channels / 16) 21-class FCN-8s as caffemodel layers: ``{name: [weight, bias]}``."""
    return random_layers(21, 16, seed=5)


@pytest.fixture(scope="module")
def caffemodel(tmp_path_factory, layers) -> Path:
    path = tmp_path_factory.mktemp("caffe") / "face_seg_fcn8s.caffemodel"
    path.write_bytes(caffemodel_bytes(layers))
    return path


def assert_layers_equal(state: dict, layers) -> None:
    """Each layer's blobs, as written into the caffemodel, are the state_dict's weight and bias."""
    for name, blobs in layers.items():
        for param, blob in zip(("weight", "bias"), blobs):
            np.testing.assert_array_equal(state[f"{name}.{param}"].numpy(), blob)


# --------------------------------------------------------------------------
# Item 9: an offline machine is told which file to put in which folder, and that works.


def test_offline_error_names_url_file_and_folder_and_following_it_works(tmp_path, photos, down_url, caffemodel):
    command = ("MODEL_PARAMS_DIR=weights", f"IMGS_DIR={photos}", "OUT_DIR=out", f"WEIGHTS_URL={down_url}")
    proc = run(*command, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert line.startswith(f"error: download of {down_url} failed: ")
    assert f"download the file from {down_url}" in line
    assert "in weights/ as face_seg_fcn8s.caffemodel" in line and "face_seg_fcn8s.pt" in line
    assert "by hand" not in line
    assert not (tmp_path / "weights").exists()  # a failed download leaves no folder behind
    # Do what the line says: the caffemodel in weights/ under that name; the same command now runs offline.
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "face_seg_fcn8s.caffemodel").write_bytes(caffemodel.read_bytes())
    proc = run(*command, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "a__heatmap.png").is_file()


def test_offline_linknet_error_gives_a_convert_command_that_works(tmp_path, photos, down_url):
    command = (
        "MODEL_PARAMS_DIR=weights",
        f"IMGS_DIR={photos}",
        "OUT_DIR=out",
        "WEIGHTS=linknet34_oneflow",
        f"WEIGHTS_URL={down_url[: -len('face_seg_fcn8s.zip')]}linknet_oneflow_model.zip",
    )
    proc = run(*command, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert "linknet_oneflow_model.zip" in line and "weights/" in line
    found = re.search(r"(python -m face_segmentation_pytorch\.convert [^;()]+)$", line)
    assert found, line
    # The user downloads the zip elsewhere and runs the command the line gives, word for word.
    checkpoint = write_checkpoint(tmp_path / "src" / "linknet_oneflow_model", random_state(seed=3))
    zip_folder(checkpoint, tmp_path / "linknet_oneflow_model.zip", prefix="linknet_oneflow_model/")
    words = shlex.split(found.group(1))
    assert words[:3] == ["python", "-m", "face_segmentation_pytorch.convert"]
    converted = convert(*words[3:], cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "weights" / "linknet_oneflow_model.pt").is_file()
    assert "note:" not in converted.stdout  # the name it wrote is one the lookup finds
    proc = run(*command, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "linknet_oneflow_model.pt" in proc.stderr and (tmp_path / "out" / "a__heatmap.png").is_file()


def test_any_download_names_its_file_and_folder_by_default(tmp_path, down_url):
    """What training's INIT=imagenet download (torchvision's resnet34 file) says when offline."""
    from face_segmentation_pytorch import DownloadError
    from face_segmentation_pytorch.pipeline.download import download_url_to_file

    with pytest.raises(DownloadError) as e:
        download_url_to_file(down_url, tmp_path / "weights" / "resnet34-b627a593.pth", progress=False)
    assert str(e.value).startswith(f"download of {down_url} failed: ")
    assert str(e.value).endswith(
        f"; check the URL and your connection, or download the file from {down_url} yourself and put it in "
        f"{tmp_path / 'weights'}/ as resnet34-b627a593.pth"
    )
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# Item 10: convert refuses what it cannot write; export runs a weights file of your own.


@pytest.mark.parametrize(
    "args, subprocess_run",
    [(("{src}", "x.onnx"), True), (("SOURCE={src}", "OUT=x.onnx"), False), (("{src}", "noext"), False)],
    ids=["onnx-positional", "onnx-keys", "no-suffix"],
)
def test_convert_refuses_an_output_it_cannot_write(tmp_path, caffemodel, args, subprocess_run, capsys, monkeypatch):
    (tmp_path / "x.onnx").write_bytes(b"the user's own ONNX file")
    before = files_in(tmp_path)
    argv = [a.format(src=caffemodel) for a in args]
    if subprocess_run:  # the command, as the user ran it
        proc = convert(*argv, cwd=tmp_path)
    else:
        proc = in_process(convert_main, argv, tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = error_line(proc)
    out = args[1].removeprefix("OUT=")
    assert line.startswith(f"error: OUT={out}: ") and ".pt, .pth (torch.save) or .safetensors" in line
    if out.endswith(".onnx"):
        assert "face_segmentation_pytorch.export" in line
    assert files_in(tmp_path) == before  # nothing written, the user's file untouched


def test_export_runs_a_weights_file_with_an_entry_architecture(tmp_path, down_url):
    import onnxruntime as ort

    torch.manual_seed(7)
    trained = FaceSegmentationNet(2, channel_divisor=16).state_dict()  # not the entry's 21 classes
    torch.save(trained, tmp_path / "best.pt")
    # Export must not look for (or download) the entry's weights: the folder is empty, the server down.
    proc = export(
        "OUT=best.onnx",
        "WEIGHTS_FILE=best.pt",
        "WEIGHTS=fcn8s_500",
        "MODEL_PARAMS_DIR=empty",
        f"WEIGHTS_URL={down_url}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote best.onnx" in proc.stdout and "from best.pt" in proc.stdout
    x = np.random.default_rng(1).uniform(-120, 150, size=(2, 3, 37, 29)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"]).run(
        ["score"], {"data": x}
    )[0]
    with torch.no_grad():
        want = FaceSegmentationNet.from_state_dict(trained).eval()(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 2, 37, 29)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_export_refuses_an_output_that_is_not_onnx_and_a_missing_weights_file(tmp_path, capsys, monkeypatch):
    torch.save(FaceSegmentationNet(2, channel_divisor=16).state_dict(), tmp_path / "best.pt")
    before = files_in(tmp_path)
    proc = export("OUT=model.pt", "WEIGHTS_FILE=best.pt", cwd=tmp_path)
    assert proc.returncode == 2
    assert error_line(proc) == "error: OUT=model.pt: the export writes ONNX; name the file <name>.onnx"
    proc = in_process(export_main, ["OUT=model.onnx", "WEIGHTS_FILE=nothere.pt"], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2
    assert error_line(proc).startswith("error: WEIGHTS_FILE=nothere.pt: no such file")
    torch.save(random_state(seed=2), tmp_path / "linknet.pt")
    before = files_in(tmp_path)
    proc = in_process(export_main, ["OUT=model.onnx", "WEIGHTS_FILE=linknet.pt"], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2
    assert error_line(proc) == (
        "error: WEIGHTS_FILE=linknet.pt holds linknet34 weights, but WEIGHTS=fcn8s_500 is fcn8s; "
        "add WEIGHTS=linknet34_oneflow"
    )
    assert files_in(tmp_path) == before


# --------------------------------------------------------------------------
# Item 12: KEY=VALUE in convert and export, --help in every command's style, console scripts.


def test_convert_takes_keys_and_the_older_flags_alike(tmp_path, caffemodel, layers, capsys, monkeypatch):
    proc = convert(f"SOURCE={caffemodel}", "OUT=w/face_seg_fcn8s.pt", "SAFETENSORS=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    keyed = torch.load(tmp_path / "w" / "face_seg_fcn8s.pt", weights_only=True)
    assert_layers_equal(keyed, layers)
    assert_layers_equal(load_file(str(tmp_path / "w" / "face_seg_fcn8s.safetensors")), layers)
    assert "note:" not in proc.stdout  # a name the lookup finds
    # The older form mixed with keys gives the same file (the flags alone: test_caffe_reader, test_linknet).
    proc = in_process(
        convert_main, [caffemodel, "OUT=m/face_seg_fcn8s.pt", "--safetensors"], tmp_path, capsys, monkeypatch
    )
    assert proc.returncode == 0, proc.stderr
    other = torch.load(tmp_path / "m" / "face_seg_fcn8s.pt", weights_only=True)
    assert list(other) == list(keyed) and all(torch.equal(other[k], keyed[k]) for k in keyed)
    assert (tmp_path / "m" / "face_seg_fcn8s.safetensors").is_file()
    # A name the lookup does not find gets a note naming the one it does.
    proc = in_process(convert_main, [f"SOURCE={caffemodel}", "OUT=model.pt"], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "note: the weights lookup does not look for model.pt: name it face_seg_fcn8s.pt" in proc.stdout
    assert "WEIGHTS_FILE=model.pt" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("SOURCE={src}", "OUT=o.pt", "SAFETENSOR=true"), "unknown key 'SAFETENSOR'; did you mean SAFETENSORS?"),
        (("OUT=o.pt",), "SOURCE is required"),
        (("SOURCE=nothere.caffemodel", "OUT=o.pt"), "SOURCE=nothere.caffemodel: no such file or folder"),
        (("{src}", "o.pt", "OUT=p.pt"), "OUT is given twice"),
        (("{src}", "o.pt", "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
        (("SOURCE={src}", "OUT=o.pt", "STRICT=maybe"), "STRICT='maybe' is invalid: expected true or false"),
    ],
    ids=["typo", "no-source", "missing-source", "twice", "bad-flag", "bad-bool"],
)
def test_convert_command_mistakes_are_one_line_exit_2(tmp_path, caffemodel, args, message, capsys, monkeypatch):
    proc = in_process(convert_main, [a.format(src=caffemodel) for a in args], tmp_path, capsys, monkeypatch)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in error_line(proc)
    assert files_in(tmp_path) == {}


@pytest.mark.parametrize(
    "module, keys",
    [
        ("face_segmentation_pytorch.convert", ("SOURCE=null", "OUT=null", "SAFETENSORS=false", "STRICT=true")),
        (
            "face_segmentation_pytorch.export",
            ("OUT=null", "WEIGHTS=fcn8s_500", "WEIGHTS_FILE=null", "MODEL_PARAMS_DIR=null", "OPSET=18", "CHECK=false"),
        ),
    ],
)
def test_help_lists_the_keys_as_the_batch_command_does(module, keys):
    proc = run("--help", module=module)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"usage: python -m {module} ")
    assert "\nkeys (default, meaning):\n" in text and "\nexit status:\n" in text and "\nexample: " in text
    for key in keys:
        assert re.search(rf"^  {re.escape(key)}\n      \S", text, re.MULTILINE), key
    for code in (0, 2, 3):
        assert re.search(rf"^  {code}\s+\S", text, re.MULTILINE), code


def _declared_console_scripts() -> dict[str, str]:
    """setup.py's ``entry_points["console_scripts"]``, read from its source."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return dict(s.replace(" ", "").split("=", 1) for s in scripts)
    raise AssertionError("setup.py declares no entry_points")


def test_every_command_has_a_console_script_that_resolves_to_a_callable():
    declared = _declared_console_scripts()
    assert declared == CONSOLE_SCRIPTS
    for name, target in declared.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.distribution("face_segmentation_pytorch").entry_points
        if ep.group == "console_scripts"
    }
    assert installed == declared, "the installed scripts are not setup.py's: run pip install -e . --no-deps"


def test_installed_console_script_takes_keys(tmp_path, caffemodel, layers):
    scripts = Path(sys.executable).parent
    exe = scripts / "face-segmentation-convert"
    assert exe.is_file(), f"{exe} is missing: run pip install -e . --no-deps"
    proc = subprocess.run(
        [str(exe), f"SOURCE={caffemodel}", "OUT=face_seg_fcn8s.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert_layers_equal(torch.load(tmp_path / "face_seg_fcn8s.pt", weights_only=True), layers)
    assert all((scripts / name).is_file() for name in CONSOLE_SCRIPTS), "run pip install -e . --no-deps"


# --------------------------------------------------------------------------
# Item 13: truncated weights files are one clean line, exit 3.


def _slim_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return FaceSegmentationNet(21, channel_divisor=16).state_dict()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_truncated_pt_is_one_clean_line_exit_3_and_deleting_it_downloads_again(tmp_path, photos):
    buf = io.BytesIO()
    torch.save(_slim_state_dict(), buf)
    whole = buf.getvalue()
    weights = tmp_path / "weights"
    weights.mkdir()
    cut = weights / "face_seg_fcn8s.pt"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    server = LocalServer()
    try:
        url = server.add("/face_seg_fcn8s.zip", _zip({"face_seg_fcn8s.pt": whole}))
        command = ("MODEL_PARAMS_DIR=weights", f"IMGS_DIR={photos}", "OUT_DIR=out", f"WEIGHTS_URL={url}")
        proc = run(*command, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        assert error_line(proc) == (
            "error: weights/face_seg_fcn8s.pt: not a complete PyTorch file (truncated or damaged: the file stops "
            f"at {len(whole) * 2 // 3:,} bytes, without the zip directory torch.save writes at the end); "
            "delete it to download it again, or convert the source again"
        )
        assert server.hits == []  # a file that is there is never replaced by a download
        # Do what the line says.
        cut.unlink()
        proc = run(*command, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert server.hits == ["/face_seg_fcn8s.zip"] and cut.read_bytes() == whole
    finally:
        server.close()


@pytest.mark.parametrize("cut", [0, 9, 2 / 3], ids=["empty", "in-the-magic-number", "in-the-data"])
def test_truncated_pre_1_6_torch_file_is_named_as_such(tmp_path, cut):
    """torch.save's older (non-zip) format, in which the earlier port published its weights."""
    buf = io.BytesIO()
    torch.save(_slim_state_dict(), buf, _use_new_zipfile_serialization=False)
    whole = buf.getvalue()
    size = int(len(whole) * cut) if isinstance(cut, float) else cut
    (tmp_path / "face_seg_fcn8s.pt").write_bytes(whole[:size])
    with pytest.raises(WeightsError) as e:
        find_or_download_state_dict(tmp_path)
    reason = "the file is empty" if size == 0 else f"its data ends early, after {size:,} bytes"
    assert str(e.value) == (
        f"{tmp_path / 'face_seg_fcn8s.pt'}: not a complete PyTorch file (truncated or damaged: {reason}); "
        "delete it to download it again, or convert the source again"
    )


def _damaged_pickle(data: bytes) -> bytes:
    """``data`` (a zip-format torch.save file) with its pickle's first two bytes overwritten in place."""
    import struct

    info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the entry's bytes, after its local header
    return data[:start] + b"\xff\xff" + data[start + 2 :]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (
            _damaged_pickle,
            "not a complete PyTorch file (truncated or damaged: entry archive/data.pkl fails its CRC "
            "check); delete it to download it again, or convert the source again",
        ),
        (
            lambda data: b"name,value\n" + data[:20],
            "not a state_dict saved with torch.save (it is neither "
            "torch.save's zip format nor its older pickle format)",
        ),
    ],
    ids=["damaged-inside", "not-torch"],
)
def test_damaged_or_foreign_pt_says_which(tmp_path, damage, reason):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf)
    (tmp_path / "archive.pt").write_bytes(damage(buf.getvalue()))
    with pytest.raises(WeightsError) as e:
        read_torch_state_dict(tmp_path / "archive.pt")
    assert str(e.value).startswith(f"{tmp_path / 'archive.pt'}: {reason}")


def test_truncated_safetensors_is_one_clean_line_exit_3(tmp_path, photos):
    from safetensors.torch import save as save_bytes

    whole = save_bytes({k: v.contiguous() for k, v in _slim_state_dict().items()})
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "face_seg_fcn8s.safetensors").write_bytes(whole[: len(whole) // 2])
    proc = run("MODEL_PARAMS_DIR=weights", f"IMGS_DIR={photos}", "OUT_DIR=out", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert error_line(proc) == (
        "error: weights/face_seg_fcn8s.safetensors: not a complete safetensors file (truncated or damaged: "
        f"the file has {len(whole) // 2:,} of the {len(whole):,} bytes its header lists); "
        "delete it to download it again, or convert the source again"
    )
    assert not (tmp_path / "out").exists()


def test_truncated_weights_given_to_convert_and_export_exit_3_and_write_nothing(tmp_path, caffemodel):
    whole = caffemodel.read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(whole[: len(whole) // 2])
    buf = io.BytesIO()
    torch.save(_slim_state_dict(), buf)
    (tmp_path / "cut.pt").write_bytes(buf.getvalue()[:-100])
    before = files_in(tmp_path)
    proc = convert("cut.caffemodel", "w/face_seg_fcn8s.pt", cwd=tmp_path)  # the form today's users type
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert line.startswith("error: cut.caffemodel: not a readable caffemodel (") and "truncated" in line
    proc = export("OUT=cut.onnx", "WEIGHTS_FILE=cut.pt", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert error_line(proc).startswith("error: cut.pt: not a complete PyTorch file (truncated or damaged: ")
    assert files_in(tmp_path) == before
