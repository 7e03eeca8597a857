"""Video: the command and the generator on videos the tests make, and the LinkNet fast path.

Expectations are computed here independently of the video code: masks from a
separate :class:`FaceSegmenter` on the frames PyAV decodes here, pictures from
the blend formulas written out below, smoothing from the moving-average
formula, and the fused LinkNet path against the unfolded model in float64.
What the video files themselves keep (sound, timing, rotation, sizes, codecs)
is tested in test_video_files.py, the refusals, orders and interrupts in
test_video_safety.py, the browser in test_video_browser.py.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
av = pytest.importorskip("av")

from face_segmentation_pytorch import FaceSegmenter  # noqa: E402
from face_segmentation_pytorch.models import linknet as linknet_module  # noqa: E402
from face_segmentation_pytorch.models.linknet import LinkNet34, fast_path_applies  # noqa: E402
from face_segmentation_pytorch.pipeline.preprocess import prepare_input  # noqa: E402
from face_segmentation_pytorch.pipeline.video import (  # noqa: E402
    FADE_KEEP,
    VideoError,
    open_source,
    partial_path,
    render_frame,
    segment_video,
)
from face_segmentation_pytorch.video import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
H, W = 96, 128


def write_clip(
    path: Path, n: int, *, moving: bool = True, noise: float = 0.0, fps: float = 20.0, seed: int = 0
) -> Path:
    """A textured ellipse over a plain background (moving or static, with noise): H.264 .mp4 made with PyAV."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000), options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            cx = W * (0.3 + 0.4 * i / max(n - 1, 1)) if moving else W * 0.5
            inside = ((xx - cx) / (W * 0.22)) ** 2 + ((yy - H * 0.5) / (H * 0.32)) ** 2 < 1
            frame = np.empty((H, W, 3), np.uint8)
            frame[:] = (40, 90, 160)
            frame[inside] = texture[inside]
            if noise:
                frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(frame, format="bgr24")
            f.pts = i
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame as FFmpeg decodes it (PyAV here, BGR)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def video_info(path: Path) -> tuple[int, tuple[int, int], float]:
    """(decodable frames, (height, width), average frame rate) of a written file."""
    frames = decoded_frames(path)
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
    return len(frames), frames[0].shape[:2] if frames else (0, 0), fps


def random_linknet_state(seed: int, *, bn_stats: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = LinkNet34()
    with torch.no_grad():
        if bn_stats:  # BatchNorm that does something, so folding is really tested
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
        # Random weights give logits near one value; spread them so that
        # probabilities cover (0, 1) and masks have edges.
        model.finalconv3.weight.mul_(40.0)
    return model.state_dict()


@pytest.fixture(scope="module")
def linknet_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("linknet_weights")
    torch.save(random_linknet_state(0, bn_stats=True), folder / "linknet_oneflow_model.pt")
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 16)


@pytest.fixture(scope="module")
def linknet_segmenter(linknet_dir):
    # On the CPU: the expectations it gives are compared exactly, and its model is
    # run here on CPU tensors (the fused fast path is a CPU path).
    return FaceSegmenter("linknet34_oneflow", params_dir=linknet_dir, device="cpu", threshold=0.5, progress=False)


def run_command(args: list[str], capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------
# The command.


def test_command_writes_every_frame_and_the_masks_facesegmenter_gives(
    tmp_path, clip, linknet_dir, linknet_segmenter, capsys
):
    out, masks = tmp_path / "out" / "faces.avi", tmp_path / "masks"
    rc, err = run_command(
        [
            f"SOURCE={clip}",
            f"OUT={out}",
            f"MASKS_DIR={masks}",
            f"MODEL_PARAMS_DIR={linknet_dir}",
            "PROGRESS=false",
            "DEVICE=cpu",
        ],  # CPU numbers: compared exactly with the CPU segmenter's masks
        capsys,
    )
    assert rc == 0, err
    assert "16 frames" in err and "frames/s" in err
    source = decoded_frames(clip)
    n, hw, fps = video_info(out)
    assert (n, hw, fps) == (len(source), (H, W), 20.0)
    assert not partial_path(out).exists()
    names = sorted(p.name for p in masks.iterdir())
    assert names == [f"{i:06d}.png" for i in range(len(source))]
    covered = []
    for i, bgr in enumerate(source):
        expected = linknet_segmenter.segment(bgr[:, :, ::-1].copy()).mask
        got = cv2.imread(str(masks / names[i]), cv2.IMREAD_UNCHANGED)
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got > 0, expected, err_msg=f"frame {i}")
        covered.append(expected.mean())
    assert 0.01 < np.mean(covered) < 0.99  # masks with edges, not all one value


def test_mp4_output_and_image_sequence_source(tmp_path, clip, linknet_dir, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, bgr in enumerate(decoded_frames(clip)[:5]):
        cv2.imwrite(str(frames / f"f{i:03d}.png"), bgr)
    (frames / "f999.png").write_text("not an image")  # skipped and reported: exit 1
    out = tmp_path / "faces.mp4"
    rc, err = run_command(
        [f"SOURCE={frames}/*.png", f"OUT={out}", f"MODEL_PARAMS_DIR={linknet_dir}", "STYLE=fade", "FPS=12"], capsys
    )
    assert rc == 1, err
    assert "f999.png" in err and "1 unreadable frames skipped" in err
    assert video_info(out) == (5, (H, W), 12.0)


def test_overlay_pixels_follow_the_blend_formula(tmp_path, clip, linknet_dir, linknet_segmenter, capsys):
    frames = list(segment_video(clip, linknet_segmenter))
    k = len(frames) // 2
    f = frames[k]
    rgb = f.bgr[:, :, ::-1].astype(np.float64)
    mask = f.mask[..., None]
    # Authors' red blend: half red on face pixels, rounded half to even.
    expected_rgb = np.where(mask, np.rint(0.5 * rgb + 0.5 * np.array([255.0, 0, 0])), rgb)
    got = render_frame(f.bgr, f.mask, "overlay")
    np.testing.assert_array_equal(got[:, :, ::-1], expected_rgb.astype(np.uint8))
    # Soft weights (the probability map) for the other styles.
    p = f.pmap.astype(np.float64)[..., None]
    keep = p + (1 - p) * (75 / 255)
    fade = np.rint(rgb * keep + 255 * (1 - keep))
    assert abs(FADE_KEEP - 75 / 255) < 1e-12
    diff = np.abs(render_frame(f.bgr, f.pmap, "fade")[:, :, ::-1].astype(int) - fade)
    assert diff.max() <= 1  # float32 against float64 arithmetic
    cut = np.rint(rgb * p + np.array([0.0, 255, 0]) * (1 - p))
    diff = np.abs(render_frame(f.bgr, f.pmap, "cutout")[:, :, ::-1].astype(int) - cut)
    assert diff.max() <= 1
    # The written video holds that overlay, up to MJPG's loss. JPEG keeps
    # colour at half resolution but brightness at full, so this compares luma.
    out = tmp_path / "o.avi"
    rc, err = run_command([f"SOURCE={clip}", f"OUT={out}", f"MODEL_PARAMS_DIR={linknet_dir}"], capsys)
    assert rc == 0, err

    def luma(a):
        return a @ np.array([0.299, 0.587, 0.114])

    written = decoded_frames(out)[k][:, :, ::-1].astype(np.float64)
    near_overlay = np.abs(luma(written) - luma(expected_rgb))
    near_plain = np.abs(luma(written) - luma(rgb))
    assert near_overlay.mean() < 3
    assert near_plain[f.mask].mean() > 4 * near_overlay[f.mask].mean()  # the blend is there


def test_smoothing_follows_the_moving_average_and_lowers_flicker(tmp_path, linknet_dir):
    clip = write_clip(tmp_path / "static.mp4", 12, moving=False, noise=12.0, seed=3)
    # On the CPU, whose numbers repeat exactly from run to run (raw and smoothed runs are compared exactly).
    seg = FaceSegmenter("linknet34_oneflow", params_dir=linknet_dir, device="cpu", threshold=None, progress=False)
    first = next(iter(segment_video(clip, seg, max_frames=1))).pmap
    threshold = float(np.clip(np.median(first), 0.05, 0.95))  # many pixels near it: noise flips them
    plain = FaceSegmenter(
        "linknet34_oneflow", params_dir=linknet_dir, device="cpu", threshold=threshold, progress=False
    )
    s = 0.75
    raw = list(segment_video(clip, plain))
    smooth = list(segment_video(clip, plain, smooth=s))
    ema = None
    for r, f in zip(raw, smooth):
        np.testing.assert_array_equal(f.raw_pmap, r.pmap)  # same network output per frame
        ema = r.pmap.astype(np.float64) if ema is None else (1 - s) * r.pmap + s * ema
        np.testing.assert_allclose(f.pmap, ema, atol=1e-5)
        np.testing.assert_array_equal(f.mask, f.pmap > threshold)

    def flicker(frames):
        return np.mean([np.mean(a.mask != b.mask) for a, b in zip(frames, frames[1:])])

    assert flicker(raw) > 0.002  # the noise does flip pixels
    assert flicker(smooth) < 0.6 * flicker(raw)


def test_fcn8s_runs_on_video(tmp_path, clip, slim_weights_dir, capsys):
    masks = tmp_path / "m"
    rc, err = run_command(
        [
            f"SOURCE={clip}",
            f"MASKS_DIR={masks}",
            "WEIGHTS=fcn8s_500",
            f"MODEL_PARAMS_DIR={slim_weights_dir}",
            "INPUT_SIZE=64",
            "MAX_FRAMES=4",
            "MASK_THRESHOLD=null",
            "DEVICE=cpu",
        ],  # both on the CPU: compared exactly
        capsys,
    )
    assert rc == 0, err
    seg = FaceSegmenter(
        "fcn8s_500", params_dir=slim_weights_dir, device="cpu", input_size=64, threshold=None, progress=False
    )
    frames = decoded_frames(clip)[:4]
    assert sorted(p.name for p in masks.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    for i, bgr in enumerate(frames):
        heat = cv2.imread(str(masks / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        # 0 -> 0, 1 -> 255, rounded: the product in float64, as a float32 product
        # can land on the other side of .5 (one pixel in 40,000 did).
        expected = np.rint(np.clip(seg.segment(bgr[:, :, ::-1].copy()).pmap.astype(np.float64), 0, 1) * 255)
        np.testing.assert_array_equal(heat, expected.astype(np.uint8))


def test_ctrl_c_leaves_a_playable_file_and_exits_130(tmp_path, linknet_dir):
    clip = write_clip(tmp_path / "long.mp4", 400)
    out, masks, gates = tmp_path / "cut.avi", tmp_path / "m", tmp_path / "gates"
    gates.mkdir()
    # The command stops after its 4th frame and says so; Ctrl-C lands there, not at a moment guessed here.
    env = dict(os.environ, FSP_VIDEO_PAUSE_AT="frame:4", FSP_VIDEO_PAUSE_GATE=str(gates))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "face_segmentation_pytorch.video",
            f"SOURCE={clip}",
            f"OUT={out}",
            f"MASKS_DIR={masks}",
            f"MODEL_PARAMS_DIR={linknet_dir}",
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
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr] + [lines.put(None)], daemon=True).start()
    seen = []
    try:
        while not seen or "paused at frame:4" not in seen[-1]:
            line = lines.get(timeout=120)
            assert line is not None, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert out.exists() and not partial_path(out).exists()
    n, hw, fps = video_info(out)
    assert n == 4 and hw == (H, W) and fps == 20.0
    assert sorted(p.name for p in masks.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]  # every frame in both


@pytest.mark.parametrize(
    "args, words",
    [
        (["SOURCE=7", "OUT={tmp}/x.mp4"], "cannot open camera 7"),
        (["SOURCE={bad}", "OUT={tmp}/x.mp4"], "not a video"),
        (["SOURCE={tmp}/nothing.mp4", "OUT={tmp}/x.mp4"], "no such file"),
        (["SOURCE={clip}", "OUT={bad}/x.mp4"], "is a file"),
        (["SOURCE={clip}", "OUT=/proc/fsp_no_such/x.mp4"], "cannot write"),
        (["SOURCE={clip}", "OUT={tmp}/x.flv"], "unknown video type"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "CODEC=nosuchcodec"], "CODEC=nosuchcodec: FFmpeg (PyAV) has no"),
        (["SOURCE={clip}", "OUT={tmp}/x.webm", "CODEC=libx264"], "cannot hold H.264"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "CRF=60"], "CRF=60 is invalid for libx264: expected 0..51"),
        (["SOURCE={clip}", "OUT={tmp}/x.avi", "CRF=20"], "CRF=20: mjpeg has no constant-quality setting"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "CRF=high"], "CRF='high' is invalid"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "AUDIO=maybe"], "AUDIO='maybe' is invalid"),
        (["SOURCE={clip}", "OUT={clip}"], "is the source video itself"),
        (["SOURCE={clip}", "SHOW=true"], "SHOW=true"),
        (["SOURCE={clip}"], "nothing to write"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "SMOOTH=1"], "SMOOTH"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "STYLE=sepia"], "STYLE"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "BACKGROUND=0,300,0"], "BACKGROUND"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "SMOTH=0.5"], "did you mean SMOOTH"),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "PRECISION=half"], "PRECISION='half' is invalid"),
        (
            ["SOURCE={clip}", "OUT={tmp}/x.mp4", "DEVICE=cpu", "PRECISION=fp16"],
            "PRECISION=fp16: precision fp16 is refused on the CPU",
        ),
        (["SOURCE={clip}", "OUT={tmp}/x.mp4", "COMPILE=sometimes"], "COMPILE='sometimes' is invalid"),
    ],
)
def test_mistakes_give_one_line_exit_2_and_leave_nothing(tmp_path, clip, linknet_dir, capsys, monkeypatch, args, words):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    before = set(tmp_path.rglob("*"))
    filled = [a.format(bad=bad, tmp=tmp_path, clip=clip) for a in args]
    rc, err = run_command(filled + [f"MODEL_PARAMS_DIR={linknet_dir}"], capsys)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
    assert set(tmp_path.rglob("*")) == before  # no output, no partial file, no folder


def test_open_source_reads_the_first_frame(clip):
    with open_source(clip) as src:
        assert (src.width, src.height, src.fps, src.kind) == (W, H, 20.0, "file")
        first = src.read()
    np.testing.assert_array_equal(first, decoded_frames(clip)[0])
    with pytest.raises(VideoError, match="folder"):
        open_source(clip.parent)


def test_generator_stops_cleanly_when_the_loop_breaks(clip, linknet_segmenter):
    import threading

    frames = segment_video(clip, linknet_segmenter, queue_size=1)
    first = next(frames)
    assert first.index == 0 and first.mask.shape == (H, W)
    frames.close()
    assert not any(t.name == "fsp-video-read" and t.is_alive() for t in threading.enumerate())


# --------------------------------------------------------------------------
# The LinkNet fast path.


def _float64_reference(state, x):
    model = LinkNet34()
    model.load_state_dict(state)
    model = model.double().eval()
    with torch.no_grad():
        return model(x.double())


def test_fast_path_equals_the_unfolded_model(linknet_dir, linknet_segmenter):
    state = torch.load(linknet_dir / "linknet_oneflow_model.pt")
    model = linknet_segmenter.model
    assert model.fast_inference
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # folded at load
    g = torch.Generator().manual_seed(5)
    for shape in ((1, 3, 256, 256), (2, 3, 64, 96)):
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            assert fast_path_applies(model, x)
            y = model(x)
        ref = _float64_reference(state, x)
        assert y.shape == ref.shape
        assert float(ref.std()) > 1e-3 * float(ref.abs().max())
        assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5, shape
    assert model in linknet_module._PLANS  # the fused path ran
    # Weights changed in place are packed again, not served stale.
    x = torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        model.finalconv2.bias.add_(0.5)
        y = model(x)
        model.fast_inference = False
        dense = model(x)
        model.fast_inference = True
        model.finalconv2.bias.sub_(0.5)
    assert float((y - dense).abs().max() / dense.abs().max()) < 1e-5
    # Autograd and training take the module path.
    assert not fast_path_applies(model, x)  # grad mode is on here
    with torch.no_grad():
        model.train()
        assert not fast_path_applies(model, x)
        model.eval()


def test_a_model_object_is_not_folded_in_place(linknet_dir):
    state = random_linknet_state(1, bn_stats=True)
    mine = LinkNet34()
    mine.load_state_dict(state)
    mine.eval()
    seg = FaceSegmenter(mine, threshold=0.5, device="cpu", progress=False)
    assert seg.model is not mine and seg.model.fast_inference
    assert not mine.fast_inference
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in mine.modules()) == 48
    for k, v in mine.state_dict().items():
        assert torch.equal(v, state[k]), k
    img = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    with torch.no_grad():
        x = prepare_input(img, seg.preprocessing, size=seg.input_size)[None]
        ref = _float64_reference(state, x)
        y = seg.model(x)
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("style", ["overlay", "fade", "cutout"])
def test_mask_lookup_tables_equal_the_float_formula(style):
    rng = np.random.default_rng(7)
    bgr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = rng.random((30, 40)) > 0.4
    kw = {"color": (10, 200, 30), "background": (1, 2, 250), "alpha": 0.3}
    np.testing.assert_array_equal(
        render_frame(bgr, mask, style, **kw), render_frame(bgr, mask.astype(np.float32), style, **kw)
    )
    # Pixels outside the mask: overlay keeps them, cutout paints the background (RGB -> BGR).
    if style == "overlay":
        np.testing.assert_array_equal(render_frame(bgr, mask, style)[~mask], bgr[~mask])
    if style == "cutout":
        assert (render_frame(bgr, mask, style, **kw)[~mask] == [250, 2, 1]).all()
        np.testing.assert_array_equal(render_frame(bgr, mask, style)[mask], bgr[mask])
