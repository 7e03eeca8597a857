"""The ``train`` command as a user runs it (issue 22, items 6-8): a subprocess on
real files, weights served by a real HTTP server on 127.0.0.1.

- RESUME=true with OUT_DIR alone continues a run from its saved settings;
  EPOCHS may grow; keys given again are compared as the user meant them
  (paths resolved; LR_STEPS only where the step schedule uses them).
- A configuration that gives a BatchNorm layer one value per channel in
  training (LinkNet34 at 32x32 with one image per batch) is one error line
  and exit 2 before training, naming what to change.
- INIT=imagenet downloads torchvision's resnet34 file with the package's
  verified downloader (the sha256 prefix in its name is checked), offline
  gives exit 3 with the recipe by hand, and no failure leaves an empty OUT_DIR.

Runs use THREADS=1 (a shared 2-core machine) and tiny generated data.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from local_server import LocalServer

from face_segmentation_pytorch.models.resnet import ResNet34Encoder
from face_segmentation_pytorch.training.data import make_synthetic_dataset

FAST_FCN = (
    "WEIGHTS=fcn8s_300_no_aug",
    "CHANNEL_DIVISOR=64",
    "INPUT_SIZE=32",
    "BATCH_SIZE=4",
    "THREADS=1",
    "PROGRESS=false",
    "DEVICE=cpu",
)


def run_train(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m face_segmentation_pytorch.train ARGS`` as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (no traceback, nothing else)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def download_error_line(proc: subprocess.CompletedProcess) -> str:
    """The error of a failed download: the last stderr line, after the one that announced the download."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("face_segmentation_pytorch: downloading "), proc.stderr
    assert lines[1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[1]


def cosine_lr(lr: float, step: int, total: int) -> float:
    """The rate of 0-based optimizer ``step`` of a ``total``-step cosine run (computed here)."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / total))


@pytest.fixture(scope="module")
def data12(tmp_path_factory) -> Path:
    """8 training and 4 validation images of 32x32 (2 steps of 4 per epoch)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("d12"), 8, size=32, seed=3, val=4)


# --------------------------------------------------------------------------- item 6: RESUME


def test_resume_with_out_dir_alone_continues_from_the_saved_settings(data12, tmp_path):
    """A run started with relative paths and settings off the defaults (AdamW,
    LR 0.002, EPOCHS 4 under the cosine schedule, STOP_AFTER 1) continues
    with ``RESUME=true OUT_DIR=<absolute>`` and ``EPOCHS=8`` from another
    folder: every setting comes from the run, EPOCHS grows, STOP_AFTER (one
    invocation's) is not inherited. Before the fix: ``LR_STEPS: was [1, 2],
    now [2, 4]`` (a key never given) and ``DATA_DIR is required``."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(data12, target_is_directory=True)
    first = run_train(
        "DATA_DIR=data",
        "OUT_DIR=runs/a",
        *FAST_FCN,
        "OPTIMIZER=adamw",
        "LR=0.002",
        "EPOCHS=4",
        "STOP_AFTER=1",
        cwd=work,
    )
    assert first.returncode == 0, first.stderr
    out = work / "runs" / "a"
    assert [r["epoch"] for r in metrics(out)] == [1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    resumed = run_train("RESUME=true", f"OUT_DIR={out}", "EPOCHS=8", cwd=elsewhere)

    assert resumed.returncode == 0, resumed.stderr
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    # The logged rate is that of each epoch's last step: the first epoch's from
    # the 4-epoch curve, the others from one 8-epoch cosine at the run's LR
    # (0.002: its own, not the SGD default 0.01), 2 steps per epoch (its batch 4).
    assert rows[0]["lr"] == pytest.approx(cosine_lr(0.002, 1, 8), rel=1e-9)
    for r in rows[1:]:
        assert r["lr"] == pytest.approx(cosine_lr(0.002, 2 * r["epoch"] - 1, 16), rel=1e-9), r
    saved = (out / "config.yaml").read_text()
    for line in ("OPTIMIZER: adamw", "INPUT_SIZE: 32", "CHANNEL_DIVISOR: 64", "EPOCHS: 8", "WEIGHTS: fcn8s_300_no_aug"):
        assert line in saved.splitlines(), saved
    # The schedule follows the longer run from the second epoch on: said once.
    assert "EPOCHS changed from 4 to 8" in resumed.stderr


def test_resume_compares_keys_given_again_as_the_user_meant_them(data12, tmp_path):
    """The same folders spelled absolute (or through ``..``) match the run's
    relative ones; a key given again with another value is refused naming it;
    another data folder is refused."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(data12, target_is_directory=True)
    first = run_train("DATA_DIR=data", "OUT_DIR=runs/a", *FAST_FCN, "EPOCHS=2", "STOP_AFTER=1", cwd=work)
    assert first.returncode == 0, first.stderr
    out = work / "runs" / "a"

    other = tmp_path / "other"
    make_synthetic_dataset(other, 4, size=32, seed=9)
    changed = run_train("RESUME=true", f"OUT_DIR={out}", "LR=0.1", f"DATA_DIR={other}", "INPUT_SIZE=32", cwd=work)
    assert changed.returncode == 2
    line = one_error_line(changed)
    assert f"DATA_DIR: was '{work / 'data'}', now '{other}'" in line and "LR: was 0.01, now 0.1" in line, line
    assert "INPUT_SIZE" not in line and "OVERWRITE=true" in line, line
    assert [r["epoch"] for r in metrics(out)] == [1]  # a refusal changes nothing

    # DATA_DIR spelled as the folder the run's relative "data" links to.
    same = run_train(
        "RESUME=true",
        f"DATA_DIR={data12}",
        f"OUT_DIR={work / 'runs' / '..' / 'runs' / 'a'}",
        *FAST_FCN,
        "EPOCHS=2",
        cwd=work,
    )
    assert same.returncode == 0, same.stderr
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


# --------------------------------------------------------------------------- item 7: BatchNorm


def test_linknet34_with_one_value_per_channel_is_refused_before_training(tmp_path):
    """One image (what forces BATCH_SIZE=1) at 32x32: LinkNet34's encoder4 sees
    a 1x1 map, one value per channel. Before the fix: torch's traceback, exit 1,
    and an empty OUT_DIR left behind."""
    data = make_synthetic_dataset(tmp_path / "one", 1, size=32, seed=2)
    args = (f"DATA_DIR={data}", "WEIGHTS=linknet34_oneflow", "BATCH_SIZE=1", "EPOCHS=1", "THREADS=1", "PROGRESS=false")

    refused = run_train(*args, f"OUT_DIR={tmp_path / 'a'}", "INPUT_SIZE=32")

    assert refused.returncode == 2
    line = one_error_line(refused)
    assert "BATCH_SIZE=1" in line and "INPUT_SIZE=32" in line and "one value per channel" in line, line
    # What to change: 64 is the next size LinkNet34 takes (a 2x2 map); a second
    # image is what BATCH_SIZE=2 would need.
    assert "INPUT_SIZE=64" in line and "BATCH_SIZE=2" in line, line
    assert not (tmp_path / "a").exists()
    # The change the message names trains.
    fixed = run_train(*args, f"OUT_DIR={tmp_path / 'b'}", "INPUT_SIZE=64")
    assert fixed.returncode == 0, fixed.stderr
    assert [r["epoch"] for r in metrics(tmp_path / "b")] == [1]


def test_two_images_per_batch_at_32_train(tmp_path):
    """2 images of 1x1 per channel are 2 values: not refused (the check is exact).
    In this process: the command's refusal is tested above."""
    import face_segmentation_pytorch as fsp

    data = make_synthetic_dataset(tmp_path / "two", 2, size=32, seed=2)
    result = fsp.train(
        data,
        tmp_path / "a",
        weights="linknet34_oneflow",
        input_size=32,
        batch_size=2,
        val_fraction=0,
        epochs=1,
        threads=1,
        progress=False,
    )
    assert result.epochs_done == 1


def test_a_model_with_batchnorm_after_global_pooling_needs_two_images(tmp_path):
    """A model of one's own whose BatchNorm sees one value per channel at any
    size: refused with BATCH_SIZE=1, and no INPUT_SIZE is offered as a fix."""
    import face_segmentation_pytorch as fsp
    from face_segmentation_pytorch.errors import ConfigError

    class PooledNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm1d(4)

        def forward(self, x):
            g = self.bn(self.conv(x).mean(dim=(2, 3)))
            return self.conv(x)[:, :1] + g[:, :1, None, None]

    data = make_synthetic_dataset(tmp_path / "d", 2, size=32, seed=2)
    with pytest.raises(ConfigError) as e:
        fsp.train(data, tmp_path / "o", model=PooledNet, input_size=32, batch_size=1, epochs=1, progress=False)
    assert "layer bn " in str(e.value) and "BATCH_SIZE=2" in str(e.value) and "INPUT_SIZE=64" not in str(e.value)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- item 8: INIT=imagenet


@pytest.fixture(scope="module")
def imagenet_file() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A torchvision-layout resnet34 state_dict (``conv1``, ``layerK``, ``fc``) as
    file bytes. Every BatchNorm weight and bias is moved off 1 / 0, so an
    untouched initialisation cannot pass for it, and no parameter is exactly 0
    (a step of 1e-30 would move it)."""
    torch.manual_seed(7)
    state = ResNet34Encoder().state_dict()
    g = torch.Generator().manual_seed(8)
    for k, v in state.items():
        if k.endswith((".weight", ".bias")) and v.dim() == 1:
            v.add_(0.1 * torch.randn(v.shape, generator=g))
        if k.endswith((".weight", ".bias")):
            v.masked_fill_(v.abs() < 1e-6, 1e-3)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512, generator=g) * 0.01, torch.zeros(1000)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), state


@pytest.fixture()
def server():
    s = LocalServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def data2(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("d2"), 2, size=32, seed=4)


def imagenet_args(data: Path, out: Path, params: Path, url: str) -> tuple[str, ...]:
    # LR 1e-30: one step moves no float32 weight of the size these have, so the
    # parameters at the end are those training started from.
    return (
        f"DATA_DIR={data}",
        f"OUT_DIR={out}",
        "INIT=imagenet",
        f"IMAGENET_URL={url}",
        f"MODEL_PARAMS_DIR={params}",
        "INPUT_SIZE=32",
        "BATCH_SIZE=2",
        "VAL_FRACTION=0",
        "EPOCHS=1",
        "LR=1e-30",
        "WEIGHT_DECAY=0",
        "THREADS=1",
        "PROGRESS=false",
    )


def test_imagenet_file_is_downloaded_verified_and_trained_from(server, imagenet_file, data2, tmp_path):
    body, state = imagenet_file
    name = f"resnet34-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    url = server.add(f"/models/{name}", body)
    params = tmp_path / "params"

    proc = run_train(*imagenet_args(data2, tmp_path / "a", params, url))

    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in params.iterdir()) == [name]  # installed, nothing hidden left
    assert (params / name).read_bytes() == body
    assert f"ImageNet encoder from {params / name}" in proc.stderr
    model = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    renames = {"conv1.": "firstconv.", "bn1.": "firstbn.", **{f"layer{i}.": f"encoder{i}." for i in range(1, 5)}}
    compared = 0
    for k, v in state.items():
        if k.startswith("fc.") or "running_" in k or "num_batches" in k:
            continue  # the head is dropped; BatchNorm statistics move in training
        head = next(h for h in renames if k.startswith(h))
        assert torch.equal(model[renames[head] + k[len(head) :]], v), k
        compared += 1
    assert compared == 36 + 2 * 36  # ResNet-34's 36 convolutions and 36 BatchNorms (weight, bias)
    # The next run finds the file: one download in all.
    again = run_train(*imagenet_args(data2, tmp_path / "b", params, url))
    assert again.returncode == 0, again.stderr
    assert server.hits == [f"/models/{name}"]


def test_imagenet_file_whose_hash_does_not_match_its_name_is_refused(server, imagenet_file, data2, tmp_path):
    body, _ = imagenet_file
    digest = hashlib.sha256(body).hexdigest()
    wrong = "0badc0de" if not digest.startswith("0badc0de") else "1badc0de"
    url = server.add(f"/models/resnet34-{wrong}.pth", body)
    params = tmp_path / "params"

    proc = run_train(*imagenet_args(data2, tmp_path / "a", params, url))

    assert proc.returncode == 3
    line = download_error_line(proc)
    assert wrong in line and digest in line, line
    assert not params.exists() and not (tmp_path / "a").exists()


def test_imagenet_offline_names_the_file_and_folder_to_fetch_by_hand(data2, tmp_path):
    gone = LocalServer()
    url = gone.url("/models/resnet34-b627a593.pth")
    gone.close()  # nothing listens there any more: offline
    params = tmp_path / "params"

    proc = run_train(*imagenet_args(data2, tmp_path / "a", params, url))

    assert proc.returncode == 3
    line = download_error_line(proc)
    # The recipe by hand: the URL, the folder and the name the file must have there (not the hidden staging name).
    assert url in line and str(params) in line and " resnet34-b627a593.pth" in line and "IMAGENET_WEIGHTS" in line, line
    assert ".resnet34" not in line, line
    assert not params.exists() and not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- fine-tuning LinkNet34 from a file


def test_linknet34_fine_tuned_from_a_weights_file_keeps_its_batchnorm(data12, tmp_path):
    """Fine-tuning from a file (or the published weights) trained the inference
    network with BatchNorm folded away: the loss did not move and best.pt held 102
    tensors that WEIGHTS_FILE refused. The trained file must run where any
    LinkNet34 file runs, and differ from the one it started from."""
    import face_segmentation_pytorch as fsp
    from face_segmentation_pytorch.models.linknet import LinkNet34

    torch.manual_seed(0)
    start = LinkNet34().state_dict()
    torch.save(start, tmp_path / "start.pt")
    out = tmp_path / "run"
    proc = run_train(
        f"DATA_DIR={data12}",
        f"OUT_DIR={out}",
        "WEIGHTS=linknet34_oneflow",
        f"INIT={tmp_path / 'start.pt'}",
        "INPUT_SIZE=32",
        "BATCH_SIZE=4",
        "EPOCHS=1",
        "LR=0.01",
        "THREADS=1",
        "PROGRESS=false",
        "DEVICE=cpu",
    )
    assert proc.returncode == 0, proc.stderr
    segmenter = fsp.FaceSegmenter("linknet34_oneflow", weights_file=out / "best.pt", device="cpu", input_size=32)
    trained = LinkNet34()
    trained.load_state_dict(fsp.load_state_dict_file(out / "best.pt", "linknet34"))
    names = set(trained.state_dict())
    assert len(names) == len(start) == 306 and "firstbn.weight" in names
    moved = [k for k, v in trained.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert "firstconv.weight" in moved and "firstbn.running_mean" in moved  # trained, BatchNorm statistics too
    assert segmenter.segment(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).pmap.shape[-2:] == (32, 32)
