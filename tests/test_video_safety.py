"""The video command never writes over a source, keeps frames in their order and
names, resumes its masks, and finishes its file through repeated Ctrl-C.

Each test is a defect a user met (issue 24): ``OUT`` equal to ``SOURCE``
replaced the video; ``MASKS_DIR`` on the frames' folder overwrote frames;
``1.png ... 12.png`` were taken as 1, 10, 11, 12, 2...; an unreadable frame
renumbered the masks after it; a second Ctrl-C while the output was finished
lost it while the summary said it was written. Expectations come from the
files the tests write and from a separate FaceSegmenter, not from the video code.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

from video_clips import (  # noqa: E402
    make_clip,
    probe,
    read_marker,
    sha256,
    tree_hashes,
    write_linknet_weights,
    write_sequence,
)

from face_segmentation_pytorch import FaceSegmenter  # noqa: E402
from face_segmentation_pytorch.video import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FRAME = 1 / 30


@pytest.fixture(scope="module")
def blank_weights(tmp_path_factory) -> Path:
    return write_linknet_weights(tmp_path_factory.mktemp("blank"), blank=True)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_linknet_weights(tmp_path_factory.mktemp("edges"))


def run(args, weights: Path, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args] + [f"MODEL_PARAMS_DIR={weights}", "INPUT_SIZE=64", "DEVICE=cpu", "PROGRESS=false"])
    return rc, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def segmenter(weights: Path, threshold) -> FaceSegmenter:
    return FaceSegmenter(
        "linknet34_oneflow", params_dir=weights, device="cpu", threshold=threshold, input_size=64, progress=False
    )


# --------------------------------------------------------------------------
# Never over the source.


def test_out_that_is_the_source_is_refused_however_it_is_spelled(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "clip.mp4", n=6)
    before = sha256(clip.path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").symlink_to(clip.path)
    # As a user types it, in a subprocess: exit 2, one line, the video untouched.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "face_segmentation_pytorch.video",
            f"SOURCE={clip.path}",
            f"OUT={clip.path}",
            f"MODEL_PARAMS_DIR={blank_weights}",
            "INPUT_SIZE=64",
            "DEVICE=cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "is the source video itself" in line and "OUT=" in line and "clip_faces.mp4" in line
    for spelled in (tmp_path / "sub" / ".." / "clip.mp4", tmp_path / "link.mp4"):
        rc, err = run([f"SOURCE={clip.path}", f"OUT={spelled}"], blank_weights, capsys)
        assert rc == 2 and "is the source video itself" in one_error_line(err)
    assert sha256(clip.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "link.mp4", "sub"]  # no partial file


def test_masks_dir_over_the_source_frames_is_refused(tmp_path, blank_weights, capsys):
    frames = tmp_path / "frames"
    write_sequence(frames, [f"{i:06d}.png" for i in range(1, 6)])  # FFmpeg's own numbering
    before = tree_hashes(frames)
    rc, err = run([f"SOURCE={frames}/*.png", f"MASKS_DIR={frames}"], blank_weights, capsys)
    assert rc == 2, err
    line = one_error_line(err)
    assert "MASKS_DIR=" in line and "over the source frames (000001.png and 4 more)" in line
    assert tree_hashes(frames) == before
    # Masks beside frames of another type replace nothing: allowed.
    jpgs = tmp_path / "jpgs"
    write_sequence(jpgs, [f"{i}.jpg" for i in range(3)])
    before = tree_hashes(jpgs)
    rc, err = run([f"SOURCE={jpgs}/*.jpg", f"MASKS_DIR={jpgs}"], blank_weights, capsys)
    assert rc == 0, err
    after = tree_hashes(jpgs)
    assert {k: after[k] for k in before} == before and sorted(set(after) - set(before)) == ["0.png", "1.png", "2.png"]


def test_frames_whose_masks_would_share_a_name_are_refused(tmp_path, blank_weights, capsys):
    write_sequence(tmp_path / "a", ["1.png"])
    write_sequence(tmp_path / "b", ["1.png"])
    rc, err = run([f"SOURCE={tmp_path}/*/1.png", f"MASKS_DIR={tmp_path / 'm'}"], blank_weights, capsys)
    assert rc == 2 and "would both write the mask 1.png" in one_error_line(err)
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------
# Order and names.


def test_image_sequence_in_natural_order_for_video_masks_and_smoothing(tmp_path, blank_weights, weights, capsys):
    frames = tmp_path / "frames"
    names = [f"{i}.png" for i in range(1, 13)]  # FFmpeg's %d.png: 1.png ... 12.png
    pictures = write_sequence(frames, names)
    out = tmp_path / "seq.mp4"
    rc, err = run([f"SOURCE={frames}/*.png", f"OUT={out}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(out)
    # Frame k of the video is file k+1.png, at k / 25 s.
    assert [read_marker(p) for p in got.pictures] == list(range(12))
    assert np.allclose(got.times, [k / 25 for k in range(12)], atol=1e-6)
    # Smoothed heatmaps: the moving average runs through 1, 2, ... 12, and each is named by its frame.
    masks = tmp_path / "m"
    s = 0.5
    rc, err = run(
        [f"SOURCE={frames}/*.png", f"MASKS_DIR={masks}", f"SMOOTH={s}", "MASK_THRESHOLD=null"], weights, capsys
    )
    assert rc == 0, err
    assert sorted(p.name for p in masks.iterdir()) == sorted(names)
    seg = segmenter(weights, None)
    ema = None
    for name, pic in zip(names, pictures):
        p = seg.segment(cv2.imread(str(frames / name))[:, :, ::-1].copy()).pmap.astype(np.float64)
        ema = p if ema is None else (1 - s) * p + s * ema
        expected = np.rint(np.clip(ema, 0, 1) * 255)
        heat = cv2.imread(str(masks / name), cv2.IMREAD_UNCHANGED).astype(int)
        assert np.abs(heat - expected).max() <= 1, name  # float32 against float64 averaging
    assert 5 < expected.mean() < 250  # heatmaps with something in them


def test_an_unreadable_frame_leaves_a_gap_and_renames_nothing(tmp_path, weights, capsys):
    frames = tmp_path / "frames"
    names = [f"f{i:03d}.png" for i in range(10)]
    write_sequence(frames, names)
    (frames / "f005.png").write_text("not an image")
    out, masks = tmp_path / "gap.mp4", tmp_path / "m"
    rc, err = run([f"SOURCE={frames}/*.png", f"OUT={out}", f"MASKS_DIR={masks}"], weights, capsys)
    assert rc == 1, err  # some frames failed
    assert "f005.png" in err and "1 unreadable frames skipped" in err
    kept = [n for n in names if n != "f005.png"]
    assert sorted(p.name for p in masks.iterdir()) == kept
    seg = segmenter(weights, 0.5)
    for name in kept:
        expected = seg.segment(cv2.imread(str(frames / name))[:, :, ::-1].copy()).mask
        got = cv2.imread(str(masks / name), cv2.IMREAD_UNCHANGED) > 0
        np.testing.assert_array_equal(got, expected, err_msg=name)
    # In the video the missing frame is a gap in time: frame 6 is still at 6 / 25 s.
    assert np.allclose(probe(out).times, [i / 25 for i in range(10) if i != 5], atol=1e-6)


def test_masks_dir_resumes_where_a_run_stopped(tmp_path, weights, capsys):
    clip = make_clip(tmp_path / "clip.mp4", n=8, sound=None)
    masks = tmp_path / "m"
    rc, err = run([f"SOURCE={clip.path}", f"MASKS_DIR={masks}", "MAX_FRAMES=5"], weights, capsys)
    assert rc == 0, err
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    marked = np.full((48, 64), 77, np.uint8)  # a mask no run writes: shows whether it was kept
    cv2.imwrite(str(masks / "000002.png"), marked)
    rc, err = run([f"SOURCE={clip.path}", f"MASKS_DIR={masks}"], weights, capsys)
    assert rc == 0, err
    assert "3 frames in" in err and "3 masks written" in err and "5 already there kept" in err
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    np.testing.assert_array_equal(cv2.imread(str(masks / "000002.png"), cv2.IMREAD_UNCHANGED), marked)
    rc, err = run([f"SOURCE={clip.path}", f"MASKS_DIR={masks}", "OVERWRITE=true", "MAX_FRAMES=3"], weights, capsys)
    assert rc == 0, err
    with av.open(str(clip.path)) as c:
        third = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][2]
    expected = segmenter(weights, 0.5).segment(third).mask
    np.testing.assert_array_equal(cv2.imread(str(masks / "000002.png"), cv2.IMREAD_UNCHANGED) > 0, expected)


# --------------------------------------------------------------------------
# Ctrl-C while the output is finished.


class Lines:
    """The command's stderr, line by line, from a thread (reads never block the test forever)."""

    def __init__(self, stream) -> None:
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def until(self, words: str, timeout: float = 180) -> None:
        while True:
            try:
                line = self.q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {words!r} within {timeout} s:\n" + "".join(self.seen)) from None
            assert line is not None, f"ended before {words!r}:\n" + "".join(self.seen)
            self.seen.append(line)
            if words in line:
                return

    def rest(self) -> str:
        while (line := self.q.get(timeout=60)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def test_ctrl_c_again_while_the_file_is_finished_waits_for_it(tmp_path, weights):
    clip = make_clip(tmp_path / "talk.mp4", n=20)
    out, masks, gates = tmp_path / "cut.mp4", tmp_path / "m", tmp_path / "gates"
    gates.mkdir()
    # The command announces each pause and waits until this test opens its gate
    # (a file in gates/): every Ctrl-C lands where this test says.
    env = dict(os.environ, FSP_VIDEO_PAUSE_AT="frame:5,finishing", FSP_VIDEO_PAUSE_GATE=str(gates))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "face_segmentation_pytorch.video",
            f"SOURCE={clip.path}",
            f"OUT={out}",
            f"MASKS_DIR={masks}",
            f"MODEL_PARAMS_DIR={weights}",
            "INPUT_SIZE=64",
            "DEVICE=cpu",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # Ctrl-C as in a terminal, even where this test runs with SIGINT ignored (nohup, some CI).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = Lines(proc.stderr)
    try:
        lines.until("paused at frame:5")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stop after these frames
        lines.until("paused at finishing")  # the writer thread, before it closes the file
        for _ in range(2):  # Ctrl-C twice more while the file is being finished
            proc.send_signal(signal.SIGINT)
            lines.until("still finishing")
        (gates / "finishing").touch()  # let the writer thread finish the file
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = lines.rest()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; 5 frames" in err
    assert f"wrote {out}" in err
    assert out.exists() and not (tmp_path / ".cut.partial.mp4").exists()
    got = probe(out)
    assert len(got.times) == 5 and got.codec == "h264"
    assert abs(got.sound_s - clip.times[5]) < FRAME  # the sound ends with the pictures
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:06d}.png" for i in range(5)]
