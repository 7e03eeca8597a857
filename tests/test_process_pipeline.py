"""PIPELINE=processes: images read and written by worker processes.

The same command run with threads and with processes must write the same
files, byte for byte (the thread pipeline is checked against the Python API
and the Caffe oracle elsewhere); Ctrl-C, a killed worker and resuming must
leave only whole files. The uint8 hand-over to the device must give the
inputs the float path gives.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gate import wait_for_outputs
from PIL import Image
from test_cli import _photo, run_cli

import face_segmentation_pytorch as fsp
from face_segmentation_pytorch.pipeline.families import Preprocessing
from face_segmentation_pytorch.pipeline.preprocess import normalize_inputs, prepare_input, prepare_uint8
from face_segmentation_pytorch.pipeline.workers import Job


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_outputs(a: Path, b: Path) -> None:
    ta, tb = _tree(a), _tree(b)
    assert sorted(ta) == sorted(tb)
    different = [name for name in ta if ta[name] != tb[name]]
    assert not different, different


@pytest.fixture()
def mixed(tmp_path) -> Path:
    """Images of several sizes and kinds, one broken file, a sub-folder."""
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    _photo(120, 90, 0).save(d / "portrait.jpg")
    _photo(64, 160, 1).save(d / "wide.png")
    _photo(64, 160, 2).convert("L").save(d / "grey.png")
    _photo(90, 90, 3).convert("RGBA").save(d / "sub" / "alpha.png")
    _photo(33, 47, 4).save(d / "sub" / "odd.webp")
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    return d


@pytest.mark.parametrize(
    "extra",
    [
        ("BATCH_SIZE=3", "OVERLAY=true", "CUTOUT=true", "GALLERY={out}/gallery.png"),
        (
            "BATCH_SIZE=2",
            "MASK_THRESHOLD=0.5",
            "POSTPROCESS=full",
            "DILATE=3",
            "FEATHER=2",
            "OVERLAY=true",
            "INPUT_SIZE=null",
        ),
        ("HEATMAP_FORMAT=npy", "BATCH_SIZE=4"),
    ],
)
def test_processes_write_what_threads_write(tmp_path, mixed, slim_weights_dir, extra):
    runs = {}
    for pipeline in ("threads", "processes"):
        out = tmp_path / pipeline
        args = [a.format(out=out) for a in extra]
        proc = run_cli(
            f"MODEL_PARAMS_DIR={slim_weights_dir}",
            f"IMGS_DIR={mixed}",
            f"OUT_DIR={out}",
            "RECURSIVE=true",
            f"PIPELINE={pipeline}",
            "WORKERS=2",
            "PROGRESS=false",
            *args,
        )
        assert proc.returncode == 1, proc.stderr  # the broken file
        assert "5 images done, 1 failed" in proc.stderr.splitlines()[-1]
        runs[pipeline] = proc.stderr
    assert "worker processes" in runs["processes"] and "worker processes" not in runs["threads"]
    _same_outputs(tmp_path / "threads", tmp_path / "processes")
    rows = list(csv.reader(open(tmp_path / "processes" / "face_segmentation_failures.csv")))
    assert rows[1][0].endswith("broken.jpg") and rows[1][1] == "read"


def test_processes_with_boxes_and_per_face_masks(tmp_path, mixed, slim_weights_dir):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x,y,w,h\nportrait.jpg,10,10,50,60\nportrait.jpg,40,50,45,60\nwide.png,100,0,60,64\n")
    for pipeline in ("threads", "processes"):
        proc = run_cli(
            f"MODEL_PARAMS_DIR={slim_weights_dir}",
            f"IMGS_DIR={mixed}",
            f"OUT_DIR={tmp_path / pipeline}",
            f"BOXES={boxes}",
            "MASK_THRESHOLD=0.5",
            "PER_FACE=true",
            "CUTOUT=true",
            f"PIPELINE={pipeline}",
            "PROGRESS=false",
        )
        assert proc.returncode == 1, proc.stderr
    _same_outputs(tmp_path / "threads", tmp_path / "processes")
    assert (tmp_path / "processes" / "portrait__face1__mask.png").is_file()


def test_linknet_native_size_in_processes(tmp_path, slim_weights_dir):
    """LinkNet pads native-size inputs to multiples of 32 on the device: the
    padding must be zeros after normalisation in both pipelines."""
    from test_linknet import random_state, write_checkpoint

    params = tmp_path / "params"
    sd = random_state(seed=3)
    sd["finalconv3.weight"] *= 40.0
    write_checkpoint(params / "linknet_oneflow_model", sd)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _photo(70, 100, 0).save(imgs / "a.png")  # pads to 96x128
    _photo(64, 90, 1).save(imgs / "b.png")  # pads to 64x96: a batch of its own
    _photo(65, 97, 2).save(imgs / "c.png")  # pads to 96x128 like a.png: one batch of two shapes
    for pipeline in ("threads", "processes"):
        proc = run_cli(
            f"MODEL_PARAMS_DIR={params}",
            f"IMGS_DIR={imgs}",
            f"OUT_DIR={tmp_path / pipeline}",
            "WEIGHTS=linknet34_oneflow",
            "INPUT_SIZE=null",
            "BATCH_SIZE=3",
            "HEATMAP_FORMAT=npy",
            f"PIPELINE={pipeline}",
            "PROGRESS=false",
        )
        assert proc.returncode == 0, proc.stderr
    _same_outputs(tmp_path / "threads", tmp_path / "processes")
    # And each equals that image run alone through the API (its own padding).
    seg = fsp.FaceSegmenter("linknet34_oneflow", params_dir=params, device="cpu", input_size=None, threshold=None)
    for name in ("a", "b", "c"):
        alone = seg.segment(imgs / f"{name}.png").pmap
        np.testing.assert_allclose(np.load(tmp_path / "processes" / f"{name}__heatmap.npy"), alone, atol=1e-5)


def _many(tmp_path: Path, n: int = 40) -> Path:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(n):
        _photo(300, 300, i).save(src / f"img{i:02d}.png")
    return src


def _all_whole(out: Path) -> list[Path]:
    assert not [p for p in os.listdir(out) if p.endswith(".partial")]
    finished = sorted(out.glob("*__heatmap.png"))
    for p in finished:  # every file under its final name is a whole PNG
        Image.open(p).load()
    return finished


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "process-group"])
def test_ctrl_c_with_worker_processes(tmp_path, slim_weights_dir, whole_group):
    """Ctrl-C reaches the main process alone (kill -INT) or the whole process
    group (a terminal): either way exit 130, whole files, and the run resumes.
    It lands while a worker waits on the last image, a named pipe the test holds,
    so the test decides where (tests/gate.py)."""
    from gate import gated_image_list

    listed, last = gated_image_list(tmp_path, _photo)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "face_segmentation_pytorch",
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={listed}",
        f"OUT_DIR={out}",
        "PROGRESS=false",
        "PIPELINE=processes",
        "WORKERS=2",
        "DEVICE=cpu",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        last.wait_until_read(proc)
        wait_for_outputs(out, proc, count=39)  # the other worker finishes the rest
        workers = _children(proc.pid)
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
    finally:
        last.release()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last_line = err.strip().splitlines()[-1]
    assert "interrupted;" in last_line and "run the same command again to resume" in last_line
    assert "Traceback" not in err
    assert workers and _gone(workers)
    finished = _all_whole(out)
    assert len(finished) == 39
    last.replace_with(_png_bytes(_photo(300, 300, 39)))
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "39 already done" in resumed.stderr
    assert len(list(out.glob("*__heatmap.png"))) == 40


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _gone(pids: list[int], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except FileNotFoundError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_worker_is_replaced_and_every_image_is_written(tmp_path, slim_weights_dir):
    src, out = _many(tmp_path), tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "face_segmentation_pytorch",
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={src}",
        f"OUT_DIR={out}",
        "PROGRESS=false",
        "PIPELINE=processes",
        "WORKERS=2",
        "DEVICE=cpu",
    ]  # the CPU's pace: a GPU could finish all 40 images before the signal lands
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_outputs(out, proc)
    workers = [
        c
        for c in _children(proc.pid)
        if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
    ]
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "a worker process died; retrying its" in err and "one at a time" in err
    assert "40 images done, 0 failed" in err.strip().splitlines()[-1]
    assert len(_all_whole(out)) == 40
    assert not (out / "face_segmentation_failures.csv").exists()
    assert _gone(workers)


class _CrashOnPoison(Job):
    """A job whose reader dies, like a decoder crashing, on files named poison*."""

    def read(self, items):
        if any(Path(path).name.startswith("poison") for _, path, _ in items):
            os._exit(7)
        return super().read(items)


def test_an_image_that_kills_its_worker_is_reported_and_the_rest_are_written(tmp_path, slim_weights_dir, monkeypatch):
    from face_segmentation_pytorch import cli
    from face_segmentation_pytorch.pipeline import workers as workers_module

    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(12):
        _photo(40, 50, i).save(src / f"img{i:02d}.png")
    _photo(40, 50, 99).save(src / "poison.png")
    out = tmp_path / "out"
    # The worker processes unpickle the job: its class must be importable there,
    # as this test module is (tests/ is on the path they inherit).
    monkeypatch.setattr(workers_module, "Job", _CrashOnPoison)
    args = [
        f"MODEL_PARAMS_DIR={slim_weights_dir}",
        f"IMGS_DIR={src}",
        f"OUT_DIR={out}",
        "PIPELINE=processes",
        "WORKERS=2",
        "BATCH_SIZE=3",
        "PROGRESS=false",
        "DEVICE=cpu",
    ]
    assert cli.main(args) == 1
    rows = list(csv.reader(open(out / "face_segmentation_failures.csv")))
    assert [(Path(r[0]).name, r[1]) for r in rows[1:]] == [("poison.png", "worker")]
    assert "died on this image twice" in rows[1][2]
    written = sorted(p.name for p in out.glob("*__heatmap.png"))
    assert written == [f"img{i:02d}__heatmap.png" for i in range(12)]
    assert not [p for p in os.listdir(out) if p.endswith(".partial")]
    import multiprocessing

    assert not multiprocessing.active_children()


def test_no_worker_outlives_the_run(tmp_path, slim_weights_dir):
    src = tmp_path / "few"
    src.mkdir()
    for i in range(3):
        _photo(50, 50, i).save(src / f"{i}.png")
    code = (
        "import os, sys\n"
        "from face_segmentation_pytorch.cli import main\n"
        f"rc = main(['MODEL_PARAMS_DIR={slim_weights_dir}', 'IMGS_DIR={src}', 'PIPELINE=processes', "
        "'WORKERS=2', 'PROGRESS=false'])\n"
        "import multiprocessing\n"
        "print(len(multiprocessing.active_children()), rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0"]


# --------------------------------------------------------------------------- the uint8 hand-over


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(500, "BGR", (104.00698793, 116.66876762, 122.67891434)),
        Preprocessing(256, "RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "pil_bilinear"),
        Preprocessing(256, "RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "pil_bilinear", True),
    ],
)
@pytest.mark.parametrize("pre_normalize", [False, True])
def test_uint8_then_normalize_equals_the_float_path_alone_and_in_batches(pre, pre_normalize):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(40, 200, (37 + k, 53, 3), dtype=np.uint8) for k in range(3)]
    imgs.append(np.full((20, 20, 3), 9, np.uint8))  # flat: the stretch leaves it alone
    size = (64, 48)
    u8 = [prepare_uint8(im, pre, size=size) for im in imgs]
    assert all(x.dtype == torch.uint8 and x.shape == (3, 64, 48) for x in u8)
    batch = normalize_inputs(torch.stack(u8), pre, pre_normalize=pre_normalize)
    for k, im in enumerate(imgs):
        want = prepare_input(im, pre, size=size, pre_normalize=pre_normalize)
        assert torch.equal(normalize_inputs(u8[k], pre, pre_normalize=pre_normalize), want)
        assert torch.equal(batch[k], want)  # a batch gives each image what it gets alone
    # Independent of the code: BGR minus the mean, no scaling, for the Caffe entry.
    if pre.channel_order == "BGR" and not pre_normalize:
        raw = imgs[0][:2, :2, ::-1].astype(np.float32).transpose(2, 0, 1)
        x = normalize_inputs(prepare_uint8(imgs[0][:2, :2], pre), pre)
        np.testing.assert_array_equal(x.numpy(), raw - np.float32(pre.mean).reshape(3, 1, 1))


def test_segmenter_batches_of_mixed_shapes_equal_single_images(slim_weights_dir):
    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", input_size=None, threshold=None)
    imgs = [_photo(40, 60, 0), _photo(40, 60, 1), _photo(30, 60, 2)]
    prepared = [seg.prepare(im) for im in imgs]
    # What run() sends to the network: uint8, unnormalised.
    assert all(x.dtype == torch.uint8 for p in prepared for x in p.inputs)
    together = seg.run(prepared)
    for im, got in zip(imgs, together):
        np.testing.assert_allclose(got.pmap, seg.segment(im).pmap, atol=1e-6)


def test_a_batch_comes_back_in_one_host_buffer(slim_weights_dir):
    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", input_size=None, threshold=None)
    prepared = [seg.prepare(_photo(40, 60, k)) for k in range(2)] + [seg.prepare(_photo(30, 20, 5))]
    maps = seg.start(prepared).result()
    assert [tuple(m.shape) for m in maps] == [(40, 60), (40, 60), (30, 20)]
    assert len({m.untyped_storage().data_ptr() for m in maps}) == 1


def test_preparer_and_assembler_travel_to_processes_but_a_detector_object_does_not(slim_weights_dir):
    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", postprocess="largest", dilate=2)
    clone = pickle.loads(pickle.dumps(seg.preparer))
    img = _photo(50, 40, 0)
    assert torch.equal(clone.prepare(img).inputs[0], seg.prepare(img).inputs[0])
    assert pickle.loads(pickle.dumps(seg.assembler)) == seg.assembler
    from face_segmentation_pytorch.pipeline.segmenter import Preparer

    class Detector(fsp.pipeline.crop.FaceDetector):
        def __init__(self):  # no models needed: it is never run here
            pass

    with pytest.raises(ValueError, match="cannot be sent to worker processes"):
        pickle.dumps(Preparer(seg.preprocessing, 500, crop=Detector()))


@pytest.mark.parametrize(
    "args, message",
    [
        (("PIPELINE=fast",), "PIPELINE='fast' is invalid: expected auto, threads or processes"),
        (("WORKERS=0",), "WORKERS=0 is invalid: expected auto or an integer >= 1"),
        (("PIPELINE=processes", "ENGINE=ray"), "ENGINE=ray's actors are processes already"),
    ],
)
def test_pipeline_mistakes_are_one_line_errors(tmp_path, slim_weights_dir, args, message):
    (tmp_path / "imgs").mkdir()
    _photo(20, 20, 0).save(tmp_path / "imgs" / "a.png")
    proc = run_cli(f"MODEL_PARAMS_DIR={slim_weights_dir}", f"IMGS_DIR={tmp_path / 'imgs'}", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_auto_picks_threads_on_the_cpu_and_processes_on_cuda():
    from face_segmentation_pytorch.pipeline.workers import choose_pipeline, default_workers

    assert choose_pipeline("auto", "cpu") == "threads"
    assert choose_pipeline("auto", "cuda") == "processes"
    assert choose_pipeline("processes", "cpu") == "processes"
    assert default_workers("threads") == 2
    assert 1 <= default_workers("processes") <= 16


def test_masks_thresholded_on_the_device_equal_the_host_rule(slim_weights_dir):
    """The batch command brings masks, not probabilities, back from the device
    when it writes masks; they must be the masks the probabilities give."""
    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=0.3, postprocess="largest", dilate=1)
    prepared = [seg.prepare(_photo(60, 80, k)) for k in range(3)]
    masks = seg.start(prepared, masks_only=True).result()
    assert all(m.dtype == torch.bool for m in masks)
    probs = seg.start(prepared).result()
    for m, p in zip(masks, probs):
        assert torch.equal(m, p > 0.3) and 0 < int(m.sum()) < m.numel()
    from_masks = [seg.assembler.assemble(p, [m.numpy()]) for p, m in zip(prepared, masks)]
    for a, b in zip(from_masks, seg.run(prepared)):
        assert a.pmap is None and a.size == b.size
        np.testing.assert_array_equal(a.mask, b.mask)
    # The comparison is made in float32 on both sides (float32(0.3) is not above 0.3).
    x = np.array(
        [np.float32(0.3), np.nextafter(np.float32(0.3), np.float32(0)), np.nextafter(np.float32(0.3), np.float32(1))],
        dtype=np.float32,
    )
    np.testing.assert_array_equal((torch.from_numpy(x) > 0.3).numpy(), x > 0.3)
    with pytest.raises(ValueError, match="needs a threshold"):
        fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", threshold=None).start(prepared, masks_only=True)


def test_face_detection_in_worker_processes(tmp_path, slim_weights_dir):
    """CROP=faces: each worker process builds its own detector (MTCNN and dlib's
    landmarks); the faces, boxes and masks are those the threads find."""
    from test_crop import _photo_folder

    folder = _photo_folder(tmp_path)
    for pipeline in ("threads", "processes"):
        proc = run_cli(
            f"MODEL_PARAMS_DIR={slim_weights_dir}",
            f"IMGS_DIR={folder}",
            f"OUT_DIR={tmp_path / pipeline}",
            "CROP=faces",
            "MASK_THRESHOLD=0.5",
            "PER_FACE=true",
            "OVERLAY=true",
            f"PIPELINE={pipeline}",
            "WORKERS=2",
            "PROGRESS=false",
        )
        assert proc.returncode == 0, proc.stderr
        assert "3 images done, 0 failed, 0 skipped (outputs exist), 1 without a face" in proc.stderr.splitlines()[-1]
    _same_outputs(tmp_path / "threads", tmp_path / "processes")
    assert (tmp_path / "processes" / "pair__face1__mask.png").is_file()


def test_a_script_without_a_main_guard_is_told_the_rule_and_still_runs(tmp_path, slim_weights_dir):
    """Spawned workers import the main script again; one that calls the command at
    import gets a warning there instead of a second run (or workers of workers)."""
    (tmp_path / "imgs").mkdir()
    _photo(30, 30, 0).save(tmp_path / "imgs" / "a.png")
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from face_segmentation_pytorch.cli import main\n"
        f"main(['MODEL_PARAMS_DIR={slim_weights_dir}', 'IMGS_DIR={tmp_path / 'imgs'}', "
        "'PIPELINE=processes', 'WORKERS=2', 'PROGRESS=false', 'DEVICE=cpu'])\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("put the call under if __name__ == '__main__'") == 2  # once per worker
    assert "1 image done, 0 failed" in proc.stderr.strip().splitlines()[-1]
    assert (tmp_path / "imgs" / "a.png__heatmap.png").is_file()


def test_prepared_float_inputs_and_live_settings_keep_their_old_meaning(slim_weights_dir):
    """Code written before inputs stayed uint8: a Prepared holding network inputs
    (prepare_input's floats) is run as it is, not normalised twice; and setting
    seg.threshold after construction still changes the masks."""
    from face_segmentation_pytorch.pipeline.segmenter import Prepared

    seg = fsp.FaceSegmenter(params_dir=slim_weights_dir, device="cpu", progress=False)
    img = np.asarray(_photo(50, 60, 0))
    want = seg.segment(img)
    old_style = Prepared(
        None, None, [prepare_input(img, seg.preprocessing, size=seg.input_size)], [(50, 60)], None, [None], (50, 60)
    )
    np.testing.assert_array_equal(seg.run([old_style])[0].pmap, want.pmap)
    higher = float(np.quantile(want.pmap, 0.75))
    seg.threshold = higher
    assert seg.assembler.threshold == higher
    np.testing.assert_array_equal(seg.segment(img).mask, want.pmap > higher)
    assert seg.segment(img).mask.sum() < want.mask.sum()


def _die_at_start():
    os._exit(3)


def test_workers_that_cannot_start_give_one_error_line(tmp_path, slim_weights_dir, monkeypatch, capsys):
    from face_segmentation_pytorch import cli
    from face_segmentation_pytorch.pipeline import workers as workers_module

    (tmp_path / "imgs").mkdir()
    _photo(30, 30, 0).save(tmp_path / "imgs" / "a.png")
    monkeypatch.setattr(workers_module, "_init_process", _die_at_start)  # every worker dies as it starts
    rc = cli.main(
        [
            f"MODEL_PARAMS_DIR={slim_weights_dir}",
            f"IMGS_DIR={tmp_path / 'imgs'}",
            "PIPELINE=processes",
            "WORKERS=2",
            "PROGRESS=false",
            "DEVICE=cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error: PIPELINE=processes: the worker processes died before reading any image" in err
    assert "Traceback" not in err
    assert not (tmp_path / "imgs" / "a.png__heatmap.png").exists()
