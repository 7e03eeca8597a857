"""ENGINE=ray: the batch job on Ray Data actors, checked against ENGINE=local.

Comparing with ``ENGINE=local`` is the point here: the issue asks for the same
job (inputs, output names, masks byte for byte, heatmaps within 1/255, resume,
failure report, exit status) on another engine, so the local engine is the
reference for the plumbing; the numbers themselves are checked elsewhere
(test_independent_expectations, test_model_oracle). The library API is checked
against :class:`FaceSegmenter` directly.

Ray runs locally with 2 CPUs and actors of fractional CPUs (two 1-CPU actors
deadlock a 2-CPU Ray: /work/shared/reference/RAY_NOTES.md). Most runs share
one Ray session started in this process (``cli.main`` reuses it); three runs
are real ``python -m face_segmentation_pytorch ENGINE=ray ...`` subprocesses
that start their own local Ray, as a user's would.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import _last_line, _photo, run_cli

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch import cli
from face_segmentation_pytorch.errors import ConfigError
from face_segmentation_pytorch.jobs.local import run_local
from face_segmentation_pytorch.pipeline import ray_engine
from face_segmentation_pytorch.pipeline.ray_engine import plan_actors, remove_stale_partials

NEEDS_RAY = (
    "ENGINE=ray needs ray[data] (pip install 'face_segmentation_pytorch[ray]'; requirements-test.txt installs it)"
)


def _need_ray():
    return pytest.importorskip("ray", reason=NEEDS_RAY)


# --------------------------------------------------------------------------
# Without Ray: planning, clean-up, keys, the missing extra
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes, actors, gpus, expected",
    [
        # One 2-CPU machine: 0.5 CPU stays free; one actor takes the other 1.5.
        ([(2, 0)], None, 0, (1, 1.5)),
        ([(2, 0)], 2, 0, (2, 0.75)),
        ([(2, 0)], 3, 0, (3, 0.5)),
        # Two 8-CPU nodes, 3 actors: 7.5 usable each; 3.75 puts 2 + 2 >= 3 in place,
        # while 7.5 (one per node) would leave the third waiting.
        ([(8, 0), (8, 0)], 3, 0, (3, 3.75)),
        ([(8, 0), (8, 0)], None, 0, (2, 7.5)),
        # GPU actors go only where GPUs are: 4 slots on the 16-CPU node, 15.5 / 4 each.
        ([(8, 0), (16, 4)], None, 1, (4, 3.875)),
        ([(16, 2)], None, 0.5, (4, 3.875)),
        ([(16, 2), (16, 2)], 3, 1, (3, 7.75)),
    ],
)
def test_plan_actors(nodes, actors, gpus, expected):
    assert plan_actors(nodes, actors, gpus) == expected


def test_plan_actors_refuses_what_cannot_be_placed():
    with pytest.raises(ConfigError, match="has 0 GPUs"):
        plan_actors([(8, 0)], None, 1)
    with pytest.raises(ConfigError, match="RAY_NUM_ACTORS=5 with RAY_GPUS_PER_ACTOR=1 needs 5 GPUs; .* holds 4"):
        plan_actors([(32, 4)], 5, 1)
    with pytest.raises(ConfigError, match="no CPU to spare"):
        plan_actors([(0.5, 0)], None, 0)


def test_torch_threads():
    assert [ray_engine.torch_threads(c) for c in (0.25, 0.75, 1.5, 2.5, 7.75)] == [1, 1, 2, 3, 8]


def test_remove_stale_partials_removes_only_this_jobs_temporary_files(tmp_path):
    (tmp_path / "sub").mkdir()
    stems = [tmp_path / "a", tmp_path / "sub" / "b.jpg"]
    ours = [
        tmp_path / ".a__mask.png.0123abcd.partial",
        tmp_path / ".a__face1__mask.png.ffffffff.partial",
        tmp_path / "sub" / ".b.jpg__overlay.png.deadbeef.partial",
    ]
    others = [
        tmp_path / ".a__heatmap.png.0123abcd.partial",  # a kind this job does not write
        tmp_path / ".c__mask.png.0123abcd.partial",  # an image not in this job
        tmp_path / ".a__mask.png.xyz.partial",  # not the atomic writer's naming
        tmp_path / "a__mask.png",  # a finished output
        tmp_path / "notes.partial",
    ]
    for p in ours + others:
        p.write_bytes(b"x")
    removed = remove_stale_partials(stems, ["__mask.png", "__overlay.png"])
    assert sorted(removed) == sorted(ours)
    assert [p.exists() for p in others] == [True] * len(others)


@pytest.mark.parametrize(
    "args, message",
    [
        (["ENGINE=spark"], "ENGINE='spark' is invalid: expected local or ray"),
        (["ENGINE=ray", "RAY_NUM_ACTORS=0"], "RAY_NUM_ACTORS=0 is invalid: expected null or an integer >= 1"),
        (["ENGINE=ray", "RAY_GPUS_PER_ACTOR=-1"], "RAY_GPUS_PER_ACTOR=-1 is invalid: expected a number >= 0"),
        (["RAY_NUM_ACTORS=2"], "RAY_NUM_ACTORS=2 is invalid: applies to ENGINE=ray only"),
        (["RAY_ADDRESS=10.0.0.1:6379"], "RAY_ADDRESS='10.0.0.1:6379' is invalid: applies to ENGINE=ray only"),
    ],
)
def test_ray_keys_are_checked(args, message):
    with pytest.raises(ConfigError) as err:
        cli.parse_args(["IMGS_DIR=x", *args])
    assert message in str(err.value)


def test_ray_keys_parse():
    cfg = cli.parse_args(
        ["IMGS_DIR=x", "ENGINE=ray", "RAY_NUM_ACTORS=4", "RAY_GPUS_PER_ACTOR=0.5", "RAY_ADDRESS=10.0.0.1:6379"]
    )
    assert (cfg["ENGINE"], cfg["RAY_NUM_ACTORS"], cfg["RAY_GPUS_PER_ACTOR"], cfg["RAY_ADDRESS"]) == (
        "ray",
        4,
        0.5,
        "10.0.0.1:6379",
    )
    assert cli.parse_args(["IMGS_DIR=x"])["ENGINE"] == "local"


def test_segmenter_is_built_from_the_same_keys_as_cli_run():
    """The actors build their FaceSegmenter as the local engine does: through the one
    jobs.folder.make_segmenter, whose keyword table names real FaceSegmenter
    parameters and real command line keys."""
    tree = ast.parse(inspect.getsource(run_local))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "make_segmenter"]
    assert len(calls) == 1
    assert ray_engine.make_segmenter is cli.make_segmenter
    assert ray_engine.SEGMENTER_KEYS is cli.SEGMENTER_KEYS
    from face_segmentation_pytorch import FaceSegmenter

    params = set(inspect.signature(FaceSegmenter).parameters)
    assert set(cli.SEGMENTER_KEYS) <= params
    assert set(cli.SEGMENTER_KEYS.values()) <= set(cli.KEYS)
    # Every FaceSegmenter setting the CLI has a key for is passed.
    unpassed = params - set(cli.SEGMENTER_KEYS) - {"model", "device", "progress", "channels_last"}
    assert not unpassed, unpassed


def test_every_key_is_honoured_by_the_ray_engine():
    new = set(cli.KEYS) - ray_engine.HANDLED_KEYS
    assert not new, f"make ENGINE=ray honour {sorted(new)}, then list them in ray_engine.HANDLED_KEYS"


def test_missing_ray_names_the_extra(tmp_path, slim_weights_dir):
    (tmp_path / "imgs").mkdir()
    _photo(30, 30, 0).save(tmp_path / "imgs" / "a.png")
    # sys.modules["ray"] = None makes "import ray" fail as if it were not installed.
    code = (
        "import sys; sys.modules['ray'] = None; from face_segmentation_pytorch.cli import main; "
        f"sys.exit(main(['ENGINE=ray', 'IMGS_DIR={tmp_path / 'imgs'}', 'MODEL_PARAMS_DIR={slim_weights_dir}']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ENGINE=ray needs Ray Data: pip install 'face_segmentation_pytorch[ray]'")


# --------------------------------------------------------------------------
# Helpers: inputs, and comparing an ENGINE=ray output tree with ENGINE=local's
# --------------------------------------------------------------------------


def _make_inputs(folder: Path, n: int = 5, size: int = 90) -> Path:
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        where = folder / "sub" if i % 2 else folder
        _photo(size + 7 * i, size - 5 * i, i).save(where / (f"img{i}.jpg" if i % 3 else f"img{i}.png"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return folder


def _outputs(folder: Path) -> dict[str, Path]:
    """This tool's outputs under ``folder`` (per-face masks end in __mask.png too), by relative name."""
    from face_segmentation_pytorch.pipeline.imageio import OUTPUT_SUFFIXES

    return {
        p.relative_to(folder).as_posix(): p
        for p in folder.rglob("*")
        if p.is_file() and p.name.endswith((*OUTPUT_SUFFIXES, ".csv"))
    }


def _dirs(tmp_path: Path) -> tuple[str, str]:
    """The two OUT_DIRs, as the failure CSVs name them (the only text that differs)."""
    return str(tmp_path / "local"), str(tmp_path / "ray")


def _same_outputs(local: Path, ray: Path, *, csv_paths: tuple[str, str] | None = None) -> int:
    """Assert the two trees hold the same outputs; returns how many files were compared.

    Masks, per-face masks, faces JSON and (with masks) overlays and cut-outs:
    byte for byte. Heatmaps and what is drawn from them: within 1/255.
    """
    a, b = _outputs(local), _outputs(ray)
    assert sorted(a) == sorted(b)
    assert a, "no outputs to compare"
    for name, pa in a.items():
        pb = b[name]
        if name.endswith(".csv"):
            text_a, text_b = pa.read_text(), pb.read_text()
            if csv_paths:
                text_b = text_b.replace(csv_paths[1], csv_paths[0])
            assert text_a == text_b, name
        elif name.endswith(("__mask.png", "__faces.json")) or "__face" in name:
            assert pa.read_bytes() == pb.read_bytes(), name
        elif name.endswith(".npy"):
            np.testing.assert_allclose(np.load(pa), np.load(pb), rtol=0, atol=1 / 255, err_msg=name)
        else:
            x = np.asarray(Image.open(pa)).astype(np.int64)
            y = np.asarray(Image.open(pb)).astype(np.int64)
            assert x.shape == y.shape, name
            tol = 257 if name.endswith("__heatmap16.png") else 1
            assert np.abs(x - y).max(initial=0) <= tol, name
    return len(a)


# --------------------------------------------------------------------------
# One Ray session for this module: cli.main(ENGINE=ray) in this process uses it
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = _need_ray()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


def _main(*args: str) -> int:
    return cli.main([*args, "PROGRESS=false"])


def test_list_file_boxes_per_face_feather_match_local(ray_session, tmp_path, slim_weights_dir, capfd):
    """A list-file input, user boxes, per-face masks, feathered masks, overlays and cut-outs."""
    _make_inputs(tmp_path / "photos")
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# inputs\nphotos/img0.png\nphotos/sub/img1.jpg\nphotos/img2.jpg\nphotos/broken.jpg\nphotos/missing.jpg\n"
    )
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"img0.png": [[10, 10, 40, 50], [50, 30, 30, 30]], "sub/img1.jpg": [[5, 5, 60, 60]]}))
    common = [
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={listing}",
        "MASK_THRESHOLD=0.5",
        f"BOXES={boxes}",
        "PER_FACE=true",
        "FEATHER=2",
        "DILATE=1",
        "POSTPROCESS=largest",
        "OVERLAY=true",
        "CUTOUT=true",
        "DEVICE=cpu",
    ]  # masks compared byte for byte: both engines on the CPU
    assert _main(*common, f"OUT_DIR={tmp_path / 'local'}") == 1
    local_err = capfd.readouterr().err
    assert _main(*common, f"OUT_DIR={tmp_path / 'ray'}", "ENGINE=ray", "RAY_NUM_ACTORS=2") == 1
    ray_err = capfd.readouterr().err
    # 3 images x (mask, faces, overlay, cut-out), 3 per-face masks, the failure CSV.
    assert _same_outputs(tmp_path / "local", tmp_path / "ray", csv_paths=_dirs(tmp_path)) == 16
    assert (tmp_path / "ray" / "img0__face1__mask.png").exists()
    # The same report: failures, no-face lines, summary counts.
    pick = lambda err: [ln for ln in err.splitlines() if ln.startswith(("failed", "no face"))]  # noqa: E731
    assert pick(ray_err) == pick(local_err) and len(pick(ray_err)) == 3
    summary = lambda err: err.strip().splitlines()[-1].split(", ")[:4]  # noqa: E731
    assert (
        summary(ray_err)
        == summary(local_err)
        == ["face_segmentation_pytorch: 3 images done", "2 failed", "0 skipped (outputs exist)", "1 without a face"]
    )


def test_glob_heatmaps_next_to_images_and_resume(ray_session, tmp_path, slim_weights_dir, capfd):
    """A glob input, 16-bit heatmaps written beside the images, BATCH_SIZE=2; then a resume."""
    for name in ("local", "ray"):
        _make_inputs(tmp_path / name)
    common = [f"MODEL_PARAMS_DIR={slim_weights_dir}", "HEATMAP_FORMAT=png16", "BATCH_SIZE=2", "CUTOUT=true"]
    assert _main(*common, f"IMGS_DIR={tmp_path / 'local'}/**/img*.*") == 0
    assert _main(*common, f"IMGS_DIR={tmp_path / 'ray'}/**/img*.*", "ENGINE=ray", "RAY_NUM_ACTORS=2") == 0
    capfd.readouterr()
    assert _same_outputs(tmp_path / "local", tmp_path / "ray") == 10

    # Resume: one output lost, a writer killed mid-write in an earlier run left its
    # temporary file, and someone else's temporary file is there too.
    ray_dir = tmp_path / "ray"
    lost = ray_dir / "sub" / "img3.png__heatmap16.png"
    lost.unlink()
    stale = ray_dir / "sub" / ".img3.png__heatmap16.png.0badf00d.partial"
    stale.write_bytes(b"half a png")
    foreign = ray_dir / ".thesis.tex.0badf00d.partial"
    foreign.write_bytes(b"not ours")
    # img3 is redone whole (its cut-out too, as ENGINE=local would); the rest stay as they are.
    stamps = {p: p.stat().st_mtime_ns for p in _outputs(ray_dir).values() if "img3" not in p.name}
    assert _main(*common, f"IMGS_DIR={ray_dir}/**/img*.*", "ENGINE=ray", "RAY_NUM_ACTORS=2") == 0
    err = capfd.readouterr().err
    assert "4 already done" in err
    assert "1 image done, 0 failed, 4 skipped" in err.strip().splitlines()[-1]
    assert lost.exists() and not stale.exists() and foreign.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # the rest untouched
    assert _same_outputs(tmp_path / "local", ray_dir) == 10
    # Nothing left: no Ray work at all.
    assert _main(*common, f"IMGS_DIR={ray_dir}/**/img*.*", "ENGINE=ray") == 0
    assert "nothing to do" in capfd.readouterr().err


def test_native_size_npy_heatmaps_match_local(ray_session, tmp_path, slim_weights_dir, capfd):
    src = _make_inputs(tmp_path / "photos")
    common = [
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={src}",
        "RECURSIVE=true",
        "INPUT_SIZE=null",
        "HEATMAP_FORMAT=npy",
        "BATCH_SIZE=3",
        "FAILURE_LOG=null",
    ]
    assert _main(*common, f"OUT_DIR={tmp_path / 'local'}") == 1
    assert _main(*common, f"OUT_DIR={tmp_path / 'ray'}", "ENGINE=ray", "RAY_NUM_ACTORS=1") == 1
    capfd.readouterr()
    assert _same_outputs(tmp_path / "local", tmp_path / "ray") == 5


def test_linknet34_masks_match_local(ray_session, tmp_path, capfd):
    from test_linknet import random_state

    from face_segmentation_pytorch.models.linknet import LinkNet34

    # Seeded random weights with BatchNorm statistics (test_linknet.random_state):
    # PyTorch's default initialisation gives a flat map (about 0.524 everywhere),
    # whose masks would be all or nothing; these spread over a tenth or two.
    net = LinkNet34()
    net.load_state_dict(random_state(seed=12))
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(net.state_dict(), weights / "linknet_oneflow_model.pt")
    src = _make_inputs(tmp_path / "photos", n=4, size=70)
    # A threshold inside the maps' range, so the masks have edges to get wrong.
    pmap = fsp.FaceSegmenter(net.eval(), device="cpu", threshold=None).segment(src / "img0.png").pmap
    threshold = round(float(np.median(pmap)), 2)
    common = [
        f"MODEL_PARAMS_DIR={weights}",
        "WEIGHTS=linknet34_oneflow",
        f"IMGS_DIR={src}",
        "RECURSIVE=true",
        f"MASK_THRESHOLD={threshold}",
        "OVERLAY=true",
        "DEVICE=cpu",
    ]  # masks byte for byte: both on the CPU
    assert _main(*common, f"OUT_DIR={tmp_path / 'local'}") == 1
    assert _main(*common, f"OUT_DIR={tmp_path / 'ray'}", "ENGINE=ray", "RAY_NUM_ACTORS=2", "BATCH_SIZE=2") == 1
    capfd.readouterr()
    assert _same_outputs(tmp_path / "local", tmp_path / "ray", csv_paths=_dirs(tmp_path)) == 9
    masks = [np.asarray(Image.open(p)) for p in (tmp_path / "ray").rglob("*__mask.png")]
    assert all(0.02 < (m > 0).mean() < 0.98 for m in masks), [(m > 0).mean() for m in masks]  # not trivial


def test_segment_dataset_from_bytes(ray_session, tmp_path, slim_weights_dir):
    """The library API on ray.data.read_binary_files: results as arrays, checked against FaceSegmenter."""
    ray = ray_session
    src = _make_inputs(tmp_path / "photos", n=3)
    ds = ray.data.read_binary_files(str(src), include_paths=True)
    # CPU numbers: compared exactly with the CPU FaceSegmenter below.
    settings = {
        "MODEL_PARAMS_DIR": str(slim_weights_dir),
        "MASK_THRESHOLD": 0.5,
        "POSTPROCESS": "fill_holes",
        "DEVICE": "cpu",
    }
    rows = {Path(r["path"]).name: r for r in ray_engine.segment_dataset(ds, settings, num_actors=1).take_all()}
    assert sorted(rows) == ["broken.jpg", "img0.png", "img1.jpg", "img2.jpg"]  # sub-folders too
    bad = rows["broken.jpg"]
    assert (bad["status"], bad["stage"]) == ("failed", "read")
    assert bad["reason"].startswith(f"{bad['path']}: ")  # the source, not a temporary file
    seg = fsp.FaceSegmenter(
        params_dir=slim_weights_dir, device="cpu", threshold=0.5, postprocess="fill_holes", progress=False
    )
    for name, where in (("img0.png", src), ("img1.jpg", src / "sub"), ("img2.jpg", src)):
        expected = seg.segment(where / name)
        row = rows[name]
        assert row["status"] == "done" and row["faces"] == -1
        np.testing.assert_array_equal(row["mask"], expected.mask.astype(np.uint8) * 255)
        np.testing.assert_allclose(row["heatmap"], expected.pmap, atol=1e-5)


# --------------------------------------------------------------------------
# The command as a user runs it: a subprocess that starts its own local Ray
# --------------------------------------------------------------------------

# What a user sees from ENGINE=ray: our lines, none of Ray's.
_OUR_LINES = ("face_segmentation_pytorch: ", "segmenting: ", "failed (", "no face: ")


def test_cli_subprocess_matches_local_and_is_quiet(tmp_path, slim_weights_dir):
    _need_ray()
    src = _make_inputs(tmp_path / "photos", n=6)
    common = [
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={src}",
        "RECURSIVE=true",
        "MASK_THRESHOLD=0.5",
        "POSTPROCESS=full",
        "OVERLAY=true",
        "DEVICE=cpu",
    ]  # masks and gallery byte for byte: both on the CPU
    local = run_cli(*common, f"OUT_DIR={tmp_path / 'local'}", f"GALLERY={tmp_path / 'local.png'}")
    ray = run_cli(
        *common,
        f"OUT_DIR={tmp_path / 'ray'}",
        f"GALLERY={tmp_path / 'ray.png'}",
        "ENGINE=ray",
        "RAY_NUM_ACTORS=2",
        "BATCH_SIZE=2",
    )
    assert local.returncode == ray.returncode == 1, ray.stderr
    _same_outputs(tmp_path / "local", tmp_path / "ray", csv_paths=_dirs(tmp_path))
    assert (tmp_path / "local.png").read_bytes() == (tmp_path / "ray.png").read_bytes()
    assert "6 images done, 1 failed, 0 skipped" in _last_line(ray)
    header = r"a local Ray started for this run \(\d+ CPUs\): 2 actors of [\d.]+ CPUs, batch size 2"
    assert re.search(header, ray.stderr)
    strangers = [ln for ln in ray.stderr.splitlines() if not ln.startswith(_OUR_LINES)]
    assert not strangers, ray.stderr
    assert "Traceback" not in ray.stderr


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor process through /proc")
def test_killed_actor_is_replaced_and_every_output_is_written_once(tmp_path, slim_weights_dir):
    _need_ray()
    src = tmp_path / "many"
    src.mkdir()
    for i in range(32):
        _photo(160, 160, i).save(src / f"img{i:02d}.png")
    out = tmp_path / "out"
    job = [
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={src}",
        "MASK_THRESHOLD=0.5",
        "OVERLAY=true",
        "PROGRESS=false",
        "DEVICE=cpu",
    ]  # masks compared byte for byte with the local run: both on the CPU
    cmd = [sys.executable, "-m", "face_segmentation_pytorch", *job, f"OUT_DIR={out}", "ENGINE=ray", "RAY_NUM_ACTORS=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def actors() -> set[int]:
        # "ray::MapWorker(MapBatches(SegmentImages))..." (Ray 2.60), "ray::MapBatches(SegmentImages)" (2.9)
        return {p for p in _descendants(proc.pid) if "MapBatches(SegmentImages)" in _cmdline(p)}

    killed, done_at_kill, replacement = None, None, set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and killed is None:
            done_at_kill = len(list(out.glob("*__mask.png"))) if out.exists() else 0
            if done_at_kill >= 3:
                before = actors()
                if before:
                    killed = min(before)
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        while proc.poll() is None and not replacement and time.monotonic() < deadline:
            replacement = actors() - before  # Ray starts a new actor in its place
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no actor process found to kill"
    assert done_at_kill < 32, "the job ended before the kill; nothing was tested"
    assert replacement, "no actor replaced the killed one"
    assert proc.returncode == 0, err
    assert "32 images done, 0 failed" in err.strip().splitlines()[-1]
    # Every output once, whole, under its final name; no temporary file left
    # (and the record of the settings that made them, the rerun rule).
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"img{i:02d}{k}" for i in range(32) for k in ("__mask.png", "__overlay.png")] + ["face_segmentation_run.json"]
    )
    # ...and each equal to the local engine's.
    local = run_cli(*job, f"OUT_DIR={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr
    _same_outputs(tmp_path / "local", out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_ray_address_is_one_line_and_exit_2(tmp_path, slim_weights_dir):
    _need_ray()
    (tmp_path / "imgs").mkdir()
    _photo(30, 30, 0).save(tmp_path / "imgs" / "a.png")
    port = _free_port()
    start = time.monotonic()
    proc = run_cli(
        "ENGINE=ray",
        f"RAY_ADDRESS=127.0.0.1:{port}",
        f"IMGS_DIR={tmp_path / 'imgs'}",
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there")
    assert time.monotonic() - start < 60  # ray.init alone would retry for minutes
    assert not (tmp_path / "imgs" / "a.png__heatmap.png").exists()


def test_block_rows_are_whole_batches():
    # 40 images, 2 actors, batch 1: about four blocks per actor -> 5 rows each.
    assert ray_engine._block_rows(40, 2, 1) == 5
    # Millions of images: capped at 64 rows (16 batches of 4), for progress and retries.
    assert ray_engine._block_rows(10**6, 100, 4) == 64
    # Fewer images than actors: one batch per block.
    assert ray_engine._block_rows(3, 2, 2) == 2
