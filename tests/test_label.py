"""The label command's server through real HTTP (no browser): security rules, labels in the
trainer's layout, the frames it serves, which frames it suggests, Ctrl-C during a fine-tune,
and its one-line mistakes.

Everything runs the command as a user does (``python -m face_segmentation_pytorch.label``
in a subprocess, on an H.264 clip written with PyAV) and checks against what the test
computes itself: frames decoded here with PyAV, masks drawn here, the suggestion rule
written out again below, model outputs from a separate FaceSegmenter.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import face_segmentation_pytorch as fsp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_clips import (  # noqa: E402
    LabelProcess,
    decode_video,
    mask_png,
    random_linknet,
    scene,
    wait_for,
    write_video,
)

N = 40


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    frames, _, _ = scene(N, seed=1)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    return random_linknet(tmp_path_factory.mktemp("weights") / "start.pt")


@pytest.fixture(scope="module")
def decoded(clip) -> list[np.ndarray]:
    return decode_video(clip)


@pytest.fixture(scope="module")
def server(tmp_path_factory, clip, start_weights):
    """One server for the request tests (they each leave the project as they found it, or say so)."""
    project = tmp_path_factory.mktemp("project")
    p = LabelProcess(
        f"PROJECT={project}", f"SOURCE={clip}", f"WEIGHTS_FILE={start_weights}", "INPUT_SIZE=64", "START_FRAMES=4"
    )
    p.project = project
    yield p
    p.stop()


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def run_label(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch.label", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- the token


def test_every_request_needs_the_token_and_a_refused_one_changes_nothing(server, decoded):
    h, w = decoded[0].shape[:2]
    before = files_under(server.project)
    for token in (None, "wrong", server.token[:-1]):
        for method, path, body in (
            ("GET", "/", None),
            ("GET", "/static/app.js", None),
            ("GET", "/api/state", None),
            ("GET", "/api/frame/3.png", None),
            ("GET", "/files/label.json", None),
            ("POST", "/api/label/3", mask_png(np.ones((h, w), bool))),
            ("POST", "/api/train", b"{}"),
            ("DELETE", "/api/label/3", None),
        ):
            status, data, _ = server.request(method, path, body, token=token)
            assert status == 403, (method, path, token, status)
            assert b"needs the token the label command printed" in data
    assert files_under(server.project) == before
    # The right token, in the header or the query, is accepted.
    assert server.request("GET", "/api/state")[0] == 200
    assert server.request("GET", f"/api/state?token={server.token}", token=None)[0] == 200


# --------------------------------------------------------------------------- paths


def test_no_path_outside_the_project_can_be_read(server, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("TOP SECRET")
    os.symlink(secret, server.project / "outside")  # a link inside PROJECT to a folder outside
    os.symlink(secret / "key.txt", server.project / "key_link.txt")  # and to a file outside
    rel = os.path.relpath(secret / "key.txt", server.project)  # ../../.../secret/key.txt
    try:
        for path in (
            f"/files/{rel}",
            "/files/../label.json",
            "/files/data/../../label.json",
            "/files/%2e%2e/%2e%2e/etc/passwd",
            "/files/..%2f..%2fetc%2fpasswd",
            "/files//etc/passwd",
            "/files/%2fetc%2fpasswd",
            f"/files/{secret / 'key.txt'}",
            "/files/outside/key.txt",
            "/files/key_link.txt",
        ):
            status, data, _ = server.request("GET", path)
            assert status == 403, (path, status, data)
            assert b"TOP SECRET" not in data and b"root:" not in data
            assert b"outside the project" in data
        # The page's own files are served by exact name only.
        for path in ("/static/../label.json", "/static/%2e%2e/label.json", "/static/..%2fcommand.py"):
            status, data, _ = server.request("GET", path)
            assert status == 404 and b"settings" not in data
        # A file of the project is served.
        status, data, _ = server.request("GET", "/files/label.json")
        assert status == 200 and json.loads(data)["frames"] == N
    finally:
        (server.project / "outside").unlink()
        (server.project / "key_link.txt").unlink()


def test_a_project_whose_folders_lead_outside_is_refused(tmp_path, clip, start_weights):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, project / "data" / "masks")
    r = run_label(f"PROJECT={project}", f"SOURCE={clip}", f"WEIGHTS_FILE={start_weights}", "INPUT_SIZE=64")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: PROJECT={project}: data/masks leads outside the project (a link?); remove it"
    ]
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------- labels


def test_a_saved_label_is_the_frame_and_its_0_255_mask_in_the_trainers_layout(server, decoded):
    h, w = decoded[0].shape[:2]
    rng = np.random.default_rng(3)
    mask = rng.random((h, w)) < 0.3
    status, data, _ = server.request("POST", "/api/label/7", mask_png(mask), {"Content-Type": "image/png"})
    assert status == 200, data
    assert json.loads(data) == {"saved": 7, "face_pixels": int(mask.sum()), "labels": [7]}
    saved = np.asarray(Image.open(server.project / "data" / "masks" / "000007.png"))
    assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
    assert np.array_equal(saved == 255, mask)
    image = np.asarray(Image.open(server.project / "data" / "images" / "000007.png"))
    assert np.array_equal(image, decoded[7])  # the frame exactly as decoded, lossless
    # Served back, and listed.
    status, data, _ = server.request("GET", "/api/mask/7.png")
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(data))) == 255, mask)
    assert server.json("GET", "/api/state")[1]["labels"] == [7]
    # A mask drawn white on transparent reads the same; saving again replaces it.
    other = ~mask
    status, _, _ = server.request("POST", "/api/label/7", mask_png(other, "RGBA"))
    assert status == 200
    assert np.array_equal(np.asarray(Image.open(server.project / "data" / "masks" / "000007.png")) == 255, other)
    # The train command's data check accepts the folder (its own discovery, not ours).
    from face_segmentation_pytorch.training.data import discover

    data_found = discover(server.project / "data", val_fraction=0, seed=0, check="full", progress=False)
    assert [data_found.train.name(i) for i in range(len(data_found.train))] == ["000007"]
    # Deleted: both files go.
    status, data, _ = server.request("DELETE", "/api/label/7")
    assert status == 200 and json.loads(data)["labels"] == []
    assert not (server.project / "data" / "masks" / "000007.png").exists()
    assert not (server.project / "data" / "images" / "000007.png").exists()


def test_bad_uploads_get_a_clear_error_and_write_nothing(server, decoded):
    h, w = decoded[0].shape[:2]
    good = mask_png(np.ones((h, w), bool))
    before = files_under(server.project)
    cases = [
        (b"this is not an image", 400, "mask: not a PNG file"),
        (mask_png(np.ones((h + 1, w), bool)), 400, f"mask: {w}x{h + 1} pixels, but frame 5 is {w}x{h}"),
        (good[: len(good) // 2], 400, "mask: cannot"),
        (good[:8] + b"\x00" * 40, 400, "mask: cannot read the PNG"),
        (b"", 400, "mask: not a PNG file"),
    ]
    for body, status, message in cases:
        got, data, _ = server.request("POST", "/api/label/5", body, {"Content-Type": "image/png"})
        assert got == status, (message, got, data)
        assert json.loads(data)["error"].startswith(message), data
    # Frames that do not exist, and JSON that is not what is expected.
    assert server.request("POST", "/api/label/40", good)[0] == 404
    assert server.request("POST", "/api/label/-1", good)[0] == 404
    status, data, _ = server.request("POST", "/api/state", b"[1, 2]", {"Content-Type": "application/json"})
    assert status == 400 and "JSON object" in json.loads(data)["error"]
    assert server.json("POST", "/api/state", {"current": 999})[0] == 404
    assert server.json("POST", "/api/state", {"current": "3"})[0] == 400
    status, body = server.json("POST", "/api/train", {"epochs": "many"})
    assert status == 400 and body["error"].startswith("epochs: expected an integer")
    status, body = server.json("POST", "/api/train", {"epochs": 2})
    assert status == 400 and body["error"].startswith("label at least one frame first")
    assert server.json("POST", "/api/stop")[0] == 409
    assert server.request("DELETE", "/api/label/5")[0] == 404
    assert files_under(server.project) == before


def test_an_oversized_upload_is_refused_before_it_is_read(server):
    from face_segmentation_pytorch.label.server import MAX_JSON_BYTES, MAX_MASK_BYTES

    before = files_under(server.project)
    for path, size in (("/api/label/5", MAX_MASK_BYTES + 1), ("/api/state", MAX_JSON_BYTES + 1)):
        conn = HTTPConnection(server.host, server.port, timeout=30)
        conn.putrequest("POST", path)
        conn.putheader("X-Token", server.token)
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        conn.send(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096)  # the start of a huge body, the rest never comes
        r = conn.getresponse()
        data = r.read()
        conn.close()
        assert r.status == 413, data
        assert json.loads(data)["error"] == f"the body is {size} bytes; at most {size - 1} are taken here"
    # Without a length the server does not guess.
    conn = HTTPConnection(server.host, server.port, timeout=30)
    conn.putrequest("POST", "/api/label/5")
    conn.putheader("X-Token", server.token)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"5\r\nhello\r\n0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 411
    r.read()
    conn.close()
    assert files_under(server.project) == before
    assert server.request("GET", "/api/state")[0] == 200  # still serving


# --------------------------------------------------------------------------- frames and suggestions


def test_frames_are_served_as_decoded_in_any_order(server, decoded):
    for i in (31, 2, 17, 18, 0, 39, 5):
        status, data, _ = server.request("GET", f"/api/frame/{i}.png")
        assert status == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), decoded[i]), i
    status, data, _ = server.request("GET", f"/api/frame/{N}.png")
    assert status == 404 and json.loads(data)["error"] == f"no frame {N}: the source has {N} frames (0..{N - 1})"


def test_the_reader_finds_frames_of_b_frame_and_rotated_video_and_image_sequences(tmp_path):
    import av

    from face_segmentation_pytorch.errors import ConfigError
    from face_segmentation_pytorch.label.frames import open_frames

    frames, _, _ = scene(24, seed=4)
    path = tmp_path / "bframes.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.options = {"bf": "3", "g": "8"}  # B-frames: decode order differs from display order
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    expected = decode_video(path)
    source = open_frames(str(path))
    assert source.count == len(expected) == 24
    order = [13, 2, 3, 4, 23, 0, 12, 7, 7, 22, 1]
    for i in order:
        assert np.array_equal(source.get(i), expected[i]), i
    # A phone's clip: stored on its side with a display rotation; frames come upright, as players show them.
    rotated = tmp_path / "portrait.mp4"
    with av.open(str(rotated), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = 48, 64  # stored 48x64, shown 64x48
        s.pix_fmt = "yuv444p"
        s.options = {"crf": "0"}
        s.set_display_rotation(90)  # counter-clockwise, FFmpeg's sign
        for f in frames[:4, :48]:
            stored = np.ascontiguousarray(np.rot90(f, -1))
            for packet in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    upright = open_frames(str(rotated))
    for i in (3, 0, 1):
        assert np.abs(upright.get(i).astype(int) - frames[i, :48]).max() <= 2, i
    # An image sequence: a folder or a glob, in natural order (9 before 10, as the video command reads it).
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in (10, 2, 9):
        Image.fromarray(frames[k]).save(folder / f"f{k}.png")
    for src in (str(folder), str(folder / "f*.png")):
        seq = open_frames(src)
        assert seq.count == 3 and all(np.array_equal(seq.get(j), frames[k]) for j, k in enumerate((2, 9, 10)))
    assert open_frames(str(folder)).video_source_argument() == str(folder / "*.png")
    Image.fromarray(frames[0]).save(folder / "f00.jpg")
    with pytest.raises(ConfigError, match=r"mixes \.jpg, \.png images; give a glob"):
        open_frames(str(folder))
    with pytest.raises(ConfigError, match="no such file or folder"):
        open_frames(str(tmp_path / "missing.mp4"))
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ConfigError, match="not a video FFmpeg can read"):
        open_frames(str(tmp_path / "fake.mp4"))


def _expected_suggestions(pmaps: list[np.ndarray], labelled: set[int], start: list[int], limit: int = 12):
    """The documented rule, written out independently of the package."""
    p = [np.rint(m * 255) / 255 for m in pmaps]  # the page's 8-bit probabilities
    unsure = [1 - 2 * np.abs(m - 0.5).mean() for m in p]
    masks = [m > 0.5 for m in p]

    def iou(a, b):
        u = (a | b).sum()
        return 1.0 if u == 0 else (a & b).sum() / u

    n = len(p)
    jump = []
    for k in range(n):
        near = [iou(masks[k], masks[j]) for j in (k - 1, k + 1) if 0 <= j < n]
        jump.append(1 - min(near))
    score = np.array(unsure) + np.array(jump)
    out = [(f, None) for f in start if f not in labelled]
    taken = set(labelled) | {f for f, _ in out}
    for f in np.argsort(-score, kind="stable"):
        if len(out) >= limit:
            break
        if f in labelled or any(abs(int(f) - t) <= 1 for t in taken):
            continue
        out.append((int(f), float(score[f])))
        taken.add(int(f))
    return out


def test_suggestions_are_start_frames_then_the_least_sure(server, decoded, start_weights):
    h, w = decoded[0].shape[:2]
    _, state = server.json("GET", "/api/state")
    assert state["start_frames"] == [5, 15, 25, 35]  # floor((k + 0.5) * 40 / 4)
    for f in (5, 25):
        assert server.request("POST", f"/api/label/{f}", mask_png(np.zeros((h, w), bool)))[0] == 200
    try:
        state = wait_for(
            lambda: (s := server.json("GET", "/api/state")[1])["scan"]["state"] == "done" and s, 120, "the scan"
        )
        seg = fsp.FaceSegmenter(
            "linknet34_oneflow", weights_file=start_weights, input_size=64, threshold=None, device="cpu", progress=False
        )
        expected = _expected_suggestions([seg.segment(f).pmap for f in decoded], {5, 25}, [5, 15, 25, 35])
        got = [(s["frame"], s["score"]) for s in state["suggestions"]]
        assert [f for f, _ in got] == [f for f, _ in expected]
        assert got[:2] == [(15, None), (35, None)]
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got[2:], expected[2:]))
        assert len(got) == 12
    finally:
        for f in (5, 25):
            server.request("DELETE", f"/api/label/{f}")


def test_each_frame_starts_from_the_models_probabilities(server, decoded, start_weights):
    seg = fsp.FaceSegmenter(
        "linknet34_oneflow", weights_file=start_weights, input_size=64, threshold=None, device="cpu", progress=False
    )
    for i in (0, 21):
        status, data, _ = server.request("GET", f"/api/pmap/{i}.png")
        assert status == 200
        served = np.asarray(Image.open(io.BytesIO(data))).astype(np.float64) / 255
        p = seg.segment(decoded[i]).pmap
        assert np.abs(served - p).max() <= 0.5 / 255 + 1e-6


# --------------------------------------------------------------------------- fine-tune and Ctrl-C


def epoch_or_end(server: LabelProcess) -> dict | None:
    """The job once it has finished an epoch or ended (a failure ends the wait at once)."""
    job = server.json("GET", "/api/job")[1]["job"]
    return job if (job.get("epochs_done") or 0) >= 1 or job["state"] != "running" else None


def test_ctrl_c_stops_the_fine_tune_with_last_pt_saved_and_train_resumes_it(tmp_path, clip, start_weights, decoded):
    h, w = decoded[0].shape[:2]
    project = tmp_path / "project"
    args = (
        f"PROJECT={project}",
        f"SOURCE={clip}",
        f"WEIGHTS_FILE={start_weights}",
        "INPUT_SIZE=64",
        "BATCH_SIZE=2",
        "THREADS=1",
        "OPTIMIZER=adamw",
        "LR=0.001",
    )
    server = LabelProcess(*args)
    try:
        _, faces, hands = scene(N, seed=1)
        for f in (3, 20):
            assert server.request("POST", f"/api/label/{f}", mask_png(faces[f] & ~hands[f]))[0] == 200
        status, job = server.json("POST", "/api/train", {"epochs": 1000, "from": "start"})
        assert status == 200 and job["state"] == "running" and job["round"] == "round-001" and not job["resumed"]
        # A second start while one runs is refused.
        assert server.json("POST", "/api/train", {"epochs": 5})[0] == 409
        job = wait_for(lambda: epoch_or_end(server), 180, "the first epoch")
        assert job["state"] == "running", job
        trainer_pid = job["pid"]
    finally:
        rc, err = server.stop(signal.SIGINT)  # Ctrl-C at the terminal reaches the server alone
    assert rc == 130, err
    assert "stopped; the fine-tune (round-001) stopped and saved last.pt; Train on the page resumes it" in err
    with pytest.raises(ProcessLookupError):
        os.kill(trainer_pid, 0)  # no trainer left behind
    round_dir = project / "runs" / "round-001"
    log = (round_dir / "train.log").read_text()
    assert "interrupted; finishing this batch and saving last.pt" in log
    ckpt = torch.load(round_dir / "last.pt", map_location="cpu", weights_only=True)
    done = len((round_dir / "metrics.jsonl").read_text().splitlines())
    assert done >= 1 and ckpt["epoch"] == done  # the position of the stop, saved

    # Started again, Train resumes the same round from last.pt.
    server = LabelProcess(f"PROJECT={project}")  # the rest is remembered
    try:
        status, job = server.json("POST", "/api/train", {"epochs": done + 2, "from": "start"})
        assert status == 200 and job["round"] == "round-001" and job["resumed"], job
        final = wait_for(
            lambda: (j := server.json("GET", "/api/job")[1]["job"])["state"] != "running" and j,
            180,
            "the resumed fine-tune",
        )
        assert final["state"] == "done" and final["epochs_done"] == done + 2, final
    finally:
        rc, err = server.stop()
    assert rc == 130
    log = (round_dir / "train.log").read_text()
    assert "RESUME=true" in log and f"{round_dir / 'last.pt'} (epoch" in log
    lines = [json.loads(x) for x in (round_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, done + 3))
    # Its best.pt is what WEIGHTS_FILE runs everywhere, e.g. the batch API.
    seg = fsp.FaceSegmenter(
        "linknet34_oneflow", weights_file=round_dir / "best.pt", input_size=64, device="cpu", progress=False
    )
    assert seg.segment(decoded[0]).mask.shape == (h, w)


# --------------------------------------------------------------------------- command mistakes


def test_a_port_in_use_is_one_error_line_and_exit_2(tmp_path, clip, start_weights):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run_label(
            f"PROJECT={tmp_path / 'p'}",
            f"SOURCE={clip}",
            f"WEIGHTS_FILE={start_weights}",
            "INPUT_SIZE=64",
            f"PORT={port}",
        )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: PORT={port} on 127.0.0.1 is in use by another program; give another PORT, or PORT=0 for any free one"
    ]
    assert "http://" not in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "error: SOURCE is required the first time"),
        (["SOURCE={tmp}/missing.mp4"], "error: SOURCE={tmp}/missing.mp4: no such file or folder"),
        (["SOURCE={clip}", "THRESHOLD=1.5"], "error: THRESHOLD=1.5 is invalid: expected a number strictly between"),
        (["SOURCE={clip}", "PORT=70000"], "error: PORT=70000 is invalid: expected an integer from 0 to 65535"),
        (["SOURCE={clip}", "WEIGHTS_FILE={tmp}/none.pt"], "error: WEIGHTS_FILE={tmp}/none.pt: no such file"),
        (["SOURCE={clip}", "WEIGHTS=nope"], "error: WEIGHTS='nope' is unknown; choose one of:"),
        (
            ["SOURCE={clip}", "INPUT_SIZE=100", "WEIGHTS_FILE={weights}"],
            "error: cannot run starting weights start.pt: input_size=100",
        ),
        (["SOURCE={clip}", "EPOCS=3"], "error: unknown key 'EPOCS'; did you mean EPOCHS?"),
    ],
)
def test_mistakes_are_one_line_exit_2(tmp_path, clip, start_weights, args, message, capsys):
    from face_segmentation_pytorch.label import main

    fill = {"tmp": tmp_path, "clip": clip, "weights": start_weights}
    rc = main([f"PROJECT={tmp_path / 'p'}", *[a.format(**fill) for a in args]])  # in-process: the same main
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(**fill)), lines
    assert not (tmp_path / "p").exists() or "cannot run" in message  # a mistake leaves no project behind


def test_a_project_is_open_in_one_command_at_a_time_and_keeps_its_source(tmp_path, clip, start_weights):
    project = tmp_path / "p"
    server = LabelProcess(f"PROJECT={project}", f"SOURCE={clip}", f"WEIGHTS_FILE={start_weights}", "INPUT_SIZE=64")
    try:
        for extra in ([], ["APPLY=true"]):
            r = run_label(f"PROJECT={project}", *extra)
            assert r.returncode == 2
            assert r.stderr.strip() == (
                f"error: PROJECT={project} is open in another label command (pid {server.proc.pid}); use its page "
                "(Apply is there too), stop it, or give another PROJECT"
            )
        assert not (project / "apply" / "start").exists()
    finally:
        server.stop()
    other = tmp_path / "other.mp4"
    write_video(other, scene(5, seed=9)[0])
    r = run_label(f"PROJECT={project}", f"SOURCE={other}")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"error: SOURCE={other}: PROJECT={project} labels frames of {clip}; give that SOURCE (or none), or another PROJECT"
    )


def test_help_lists_every_key():
    r = run_label("--help")
    assert r.returncode == 0
    from face_segmentation_pytorch.label import KEYS

    for key in KEYS:
        assert f"  {key}=" in r.stdout
