"""What the video command keeps of a video file: sound, timing, rotation, size, codecs.

Clips are made here with PyAV (tests/video_clips.py): H.264 with an AAC sine
tone, variable frame rates, a phone's display rotation, odd sizes. Outputs are
read back with PyAV directly (and OpenCV where a second decoder helps), never
with the package's video code. Most runs use weights that find no face, so a
drawn frame is the source frame and each frame's marker (a grey block saying
which frame it is) survives the codec.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

from video_clips import (  # noqa: E402
    dominant_hz,
    make_clip,
    near,
    probe,
    read_marker,
    sound_packets,
    sound_span,
    write_linknet_weights,
    write_sequence,
)

from face_segmentation_pytorch.video import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHONE_STEPS = [1 / 60, 1 / 30, 1 / 20, 1 / 45]  # irregular intervals, as a phone's variable frame rate
FRAME = 1 / 30  # "within one frame"


@pytest.fixture(scope="module")
def blank_weights(tmp_path_factory) -> Path:
    return write_linknet_weights(tmp_path_factory.mktemp("blank"), blank=True)


def run(args, weights: Path, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args] + [f"MODEL_PARAMS_DIR={weights}", "INPUT_SIZE=64", "DEVICE=cpu", "PROGRESS=false"])
    return rc, capsys.readouterr().err


def summary_size(err: str) -> tuple[int, int]:
    m = re.search(r"wrote \S+ \([^)]*?(\d+)x(\d+)", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


def moov_first(path: Path) -> bool:
    data = path.read_bytes()
    return data.find(b"moov") < data.find(b"mdat")


# --------------------------------------------------------------------------


def test_phone_clip_to_mp4_keeps_every_frame_time_and_the_sound_as_it_is(tmp_path, blank_weights):
    """End to end as a user runs it: a variable-frame-rate clip with sound to faces.mp4."""
    clip = make_clip(tmp_path / "phone.mp4", n=24, steps=PHONE_STEPS)
    out = tmp_path / "faces.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "face_segmentation_pytorch.video",
            f"SOURCE={clip.path}",
            f"OUT={out}",
            f"MODEL_PARAMS_DIR={blank_weights}",
            "INPUT_SIZE=64",
            "DEVICE=cpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    got, src = probe(out), probe(clip.path)
    # Every frame, in its place, at its own source time (the clip's intervals are 17 to 50 ms).
    assert len(got.times) == len(clip.times) == 24
    assert max(abs(a - b) for a, b in zip(got.times, clip.times)) < 1e-4
    assert [read_marker(p) for p in got.pictures] == list(range(24))
    assert (got.width, got.height) == (64, 48)
    # H.264 in yuv420p with the index first: what browsers and upload pages take.
    assert (got.codec, got.pix_fmt) == ("h264", "yuv420p") and "mp4" in got.format
    assert moov_first(out)
    # The sound is the source's AAC, packet for packet (copied, not re-encoded), and still the tone.
    assert got.sound == ["aac"]
    assert got.sound_packets == src.sound_packets and len(got.sound_packets) > 20
    assert abs(got.sound_s - src.sound_s) < FRAME
    assert abs(dominant_hz(out) - 440) < 5
    assert re.search(r"wrote \S+ \(H\.264 yuv420p, 64x48, 24 frames, [\d.]+ s; sound: aac copied\)", proc.stderr)


def test_webm_is_vp9_with_opus_sound_in_step(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "talk.mp4", n=20)
    out = tmp_path / "faces.webm"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={out}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(out)
    assert (got.codec, got.pix_fmt) == ("vp9", "yuv420p") and "webm" in got.format
    assert got.sound == ["opus"]  # WebM does not take AAC: re-encoded
    assert abs(got.sound_s - clip.sound_s) < FRAME
    assert abs(dominant_hz(out) - 440) < 5
    assert len(got.times) == 20
    # WebM counts milliseconds; the muxer may shift every stream alike (the sound's
    # encoder delay): frames keep their spacing, and stay within a frame of their time.
    t0 = got.times[0]
    assert max(abs((a - t0) - b) for a, b in zip(got.times, clip.times)) <= 0.0011
    assert max(abs(a - b) for a, b in zip(got.times, clip.times)) < FRAME
    assert "sound: aac re-encoded as opus)" in err


def test_rotated_phone_clip_comes_out_upright(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "portrait.mp4", size=(64, 48), n=8, rotation=90, sound=None)
    src = probe(clip.path)
    assert (src.width, src.height, src.rotation) == (48, 64, 90)  # stored turned, shown 64x48
    out = tmp_path / "faces.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={out}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(out)
    assert (got.width, got.height, got.rotation) == (64, 48, 0)  # upright pixels, nothing left to turn
    assert "turned 90 degrees" in err
    # As the clip was drawn, and as OpenCV (which applies the rotation) and FFmpeg show it.
    cap = cv2.VideoCapture(str(clip.path))
    for i, pic in enumerate(got.pictures):
        # Two generations of 4:2:0 coding move saturated colours by about 2 levels each.
        assert near(pic, clip.pictures[i]) < 6, i
        ok, shown = cap.read()
        assert ok and near(pic, shown[:, :, ::-1]) < 6, i
        assert near(pic, clip.pictures[i][::-1, ::-1]) > 20  # (a turned picture is far)
    cap.release()
    assert [read_marker(p) for p in got.pictures] == list(range(8))


@pytest.mark.parametrize("rotation, suffix", [(-90, ".mkv"), (180, ".mov")])
def test_other_rotations_come_out_upright_and_mkv_mov_copy_the_sound(tmp_path, blank_weights, capsys, rotation, suffix):
    clip = make_clip(tmp_path / "r.mp4", size=(64, 48), n=6, rotation=rotation)
    out = tmp_path / f"faces{suffix}"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={out}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(out)
    assert (got.width, got.height, got.codec) == (64, 48, "h264")
    assert near(got.pictures[0], clip.pictures[0]) < 6
    assert got.sound == ["aac"] and sound_packets(out) == sound_packets(clip.path)  # copied as it is
    assert abs(sound_span(out) - sound_span(clip.path)) < FRAME


def test_odd_size_is_kept_in_webm_and_padded_and_said_in_mp4(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "odd.webm", size=(65, 49), n=6, sound=None, video_codec="libvpx-vp9")
    assert (probe(clip.path).width, probe(clip.path).height) == (65, 49)
    webm, mp4 = tmp_path / "faces.webm", tmp_path / "faces.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={mp4}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(mp4)
    # H.264 in 4:2:0 takes even sizes only: one pixel more each way, and the summary says what the file holds.
    assert summary_size(err) == (got.width, got.height) == (66, 50)
    assert "padded from 65x49" in err
    pic = got.pictures[0].astype(int)
    assert near(pic[:49, :65].astype(np.uint8), clip.pictures[0]) < 6
    assert np.abs(pic[:, 65] - pic[:, 64]).mean() < 6 and np.abs(pic[49] - pic[48]).mean() < 6  # the edge repeated
    rc, err = run([f"SOURCE={clip.path}", f"OUT={webm}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(webm)
    assert summary_size(err) == (got.width, got.height) == (65, 49)  # VP9 takes odd sizes as they are
    assert "padded" not in err


@pytest.mark.parametrize(
    "source, sound, suffix, expect, copied",
    [
        ("pcm.mkv", "pcm_s16le", ".mp4", "aac", False),  # MP4 for browsers: PCM re-encoded as AAC
        ("opus.webm", "libopus", ".mp4", "opus", True),  # browsers play Opus in MP4: copied
        ("talk.mp4", "aac", ".avi", "aac", True),  # AVI takes AAC too
    ],
)
def test_sound_copied_where_the_container_takes_it_else_re_encoded(
    tmp_path, blank_weights, capsys, source, sound, suffix, expect, copied
):
    codec = "libvpx-vp9" if source.endswith(".webm") else "libx264"
    clip = make_clip(tmp_path / source, n=10, sound=sound, video_codec=codec)
    out = tmp_path / f"faces{suffix}"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={out}"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(out)
    assert got.sound == [expect]
    assert abs(got.sound_s - clip.sound_s) < FRAME
    assert abs(dominant_hz(out) - 440) < 5
    assert (sound_packets(out) == sound_packets(clip.path)) == copied
    assert len(got.times) == 10


def test_audio_false_and_fps_leave_the_sound_out_and_fps_says_why(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "talk.mp4", n=10)
    quiet = tmp_path / "quiet.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={quiet}", "AUDIO=false"], blank_weights, capsys)
    assert rc == 0, err
    assert probe(quiet).sound == [] and "sound left out" not in err and "no sound" in err
    retimed = tmp_path / "retimed.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={retimed}", "FPS=10"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(retimed)
    assert got.sound == []
    assert len([line for line in err.splitlines() if "sound left out: FPS=10" in line]) == 1
    assert np.allclose(got.times, [i / 10 for i in range(10)], atol=1e-6)


def test_max_frames_ends_the_sound_where_the_pictures_end(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "talk.mp4", n=20)
    out = tmp_path / "first.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={out}", "MAX_FRAMES=8"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(out)
    assert len(got.times) == 8
    assert abs(got.sound_s - clip.times[8]) < FRAME  # 8 frames' worth, not the clip's 0.67 s
    assert got.sound_packets == sound_packets(clip.path)[: len(got.sound_packets)]  # still copied


def test_frame_count_is_the_files_own(tmp_path, blank_weights, capsys):
    # Matroska's header has no frame count: it is counted, not estimated from duration x rate.
    clip = make_clip(tmp_path / "phone.mkv", n=21, steps=[1 / 60, 1 / 15, 1 / 30])
    out = tmp_path / "faces.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={out}", "MASK_THRESHOLD=0.5"], blank_weights, capsys)
    assert rc == 0, err
    header = err.splitlines()[0]
    assert re.search(r"\(64x48, [\d.]+ fps, 21 frames", header), header
    assert len(probe(out).times) == 21


def test_a_file_cut_short_is_said_and_its_frames_kept(tmp_path, blank_weights, capsys):
    whole = make_clip(tmp_path / "whole.mkv", size=(160, 120), n=40, sound=None)
    cut = tmp_path / "cut.mkv"  # a download that stopped half-way: Matroska still opens
    cut.write_bytes(whole.path.read_bytes()[: whole.path.stat().st_size // 2])
    with av.open(str(cut)) as c:
        readable = len(list(c.decode(video=0)))
    assert 5 < readable < 40
    out = tmp_path / "faces.mp4"
    rc, err = run([f"SOURCE={cut}", f"OUT={out}"], blank_weights, capsys)
    assert rc == 1, err  # not all of the source: not a silent success
    assert "cut short?" in err and "its header says 1.3 s" in err and "could not be read whole" in err
    assert len(probe(out).times) == readable


def test_codec_and_crf_choose_the_encoder_and_quality(tmp_path, blank_weights, capsys):
    clip = make_clip(tmp_path / "talk.mp4", n=6, sound=None)
    sizes = {}
    for crf in (10, 40):
        out = tmp_path / f"crf{crf}.mp4"
        rc, err = run([f"SOURCE={clip.path}", f"OUT={out}", f"CRF={crf}"], blank_weights, capsys)
        assert rc == 0, err
        sizes[crf] = out.stat().st_size
    assert sizes[10] > 2 * sizes[40]  # lower CRF: better and bigger
    legacy = tmp_path / "legacy.mp4"
    rc, err = run([f"SOURCE={clip.path}", f"OUT={legacy}", "CODEC=mp4v"], blank_weights, capsys)
    assert rc == 0, err
    got = probe(legacy)
    assert got.codec == "mpeg4" and len(got.times) == 6  # OpenCV's four-character code, understood
    assert np.allclose(got.times, clip.times, atol=1e-4)  # MPEG-4 Part 2 takes no 1/90000: timed in 1/60000


# --------------------------------------------------------------------------
# Without PyAV.


def _without_av(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; sys.modules['av'] = None  # as if PyAV were not installed\n"
        "from face_segmentation_pytorch.video import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_without_pyav_file_video_says_what_to_install_and_images_still_work(tmp_path, blank_weights):
    clip = make_clip(tmp_path / "talk.mp4", n=3, sound=None)
    common = [f"MODEL_PARAMS_DIR={blank_weights}", "INPUT_SIZE=64", "DEVICE=cpu", "PROGRESS=false"]
    proc = _without_av([f"SOURCE={clip.path}", f"MASKS_DIR={tmp_path / 'm'}", *common], tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: SOURCE=") and "pip install 'face_segmentation_pytorch[video]'" in lines[0]
    assert "pip install av" in lines[0] and "cameras and SHOW need only OpenCV" in lines[0]
    assert not (tmp_path / "m").exists()
    write_sequence(tmp_path / "frames", [f"{i}.png" for i in range(3)])
    proc = _without_av([f"SOURCE={tmp_path / 'frames'}/*.png", f"OUT={tmp_path / 'x.mp4'}", *common], tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: OUT=") and "[video]" in proc.stderr, proc.stderr
    # Image sequences to masks need only OpenCV.
    proc = _without_av([f"SOURCE={tmp_path / 'frames'}/*.png", f"MASKS_DIR={tmp_path / 'm'}", *common], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["0.png", "1.png", "2.png"]
