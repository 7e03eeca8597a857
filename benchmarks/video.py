"""LinkNet34 on video: forward paths against ONNX Runtime, and the video command against the forward.

Measures, in one process and interleaved (so that other load on the machine
hits every variant alike), with random weights:

1. LinkNet34 forward at 256x256, batch 1: PyTorch module by module
   (channels-last; BatchNorm folded, channels-last), the fused fast path
   FaceSegmenter uses (``fast_inference_model``), and ONNX Runtime
   (CPUExecutionProvider) on this package's own export of the same model.
   Target: fast path at least 1.3x ONNX Runtime.
2. The whole video pipeline (decode in a reader thread, segment, overlay,
   encode in a writer thread: ``python -m face_segmentation_pytorch.video``'s
   code, run in this process; FFmpeg's libraries through PyAV, H.264 out) on a
   generated clip, against the fast forward alone. Target: 0.9 or more of the
   forward-only rate. ``--source mjpeg`` (default) reads an MJPEG AVI, as a
   webcam gives; ``--source h264`` an H.264 MP4 with AAC sound, as a phone
   gives (the sound is copied into the output).
3. ``--layers``: the package's Winograd 3x3 kernel against oneDNN's direct
   convolution at the encoder's 3x3 shapes (64..512 channels, 64x64..8x8).

Run: ``python benchmarks/video.py [--rounds 20] [--frames 120] [--size 640x480] [--source mjpeg|h264] [--layers]``.
``--omp-passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch starts (see the
README: on a shared or busy machine OpenMP's spinning threads cost much more
than they save).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn ``rounds`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


def random_linknet(seed: int = 0):
    import torch

    from face_segmentation_pytorch.models.linknet import LinkNet34

    torch.manual_seed(seed)
    model = LinkNet34().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.finalconv3.weight.mul_(40.0)
    return model


def bench_forward(args, tmp: Path) -> dict:
    import numpy as np
    import torch

    from face_segmentation_pytorch.export import export_onnx
    from face_segmentation_pytorch.models.linknet import fast_inference_model, fold_batchnorm

    model = random_linknet()
    plain_cl = random_linknet().to(memory_format=torch.channels_last)
    folded_cl = fold_batchnorm(model).to(memory_format=torch.channels_last)
    fast = fast_inference_model(model)
    x = torch.randn(1, 3, 256, 256)
    fns = {
        "PyTorch, channels-last": lambda: plain_cl(x),
        "PyTorch, BN folded, channels-last": lambda: folded_cl(x),
        "fast path (FaceSegmenter's)": lambda: fast(x),
    }
    try:
        import onnxruntime as ort

        onnx_path = export_onnx(model, tmp / "linknet34.onnx")
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        xn = x.numpy()
        fns["ONNX Runtime (own export)"] = lambda: session.run(["logits"], {"data": xn})
        with torch.no_grad():
            ref = model.double()(x.double()).float()
            model.float()
            out = session.run(["logits"], {"data": xn})[0]
        print(
            f"ONNX Runtime {ort.__version__}: relative difference to float64 {np.abs(out - ref.numpy()).max() / ref.abs().max():.1e}"
        )
    except ImportError:
        print(
            "onnxruntime is not installed: the ONNX Runtime row is left out (pip install 'face_segmentation_pytorch[onnx]')"
        )
    with torch.no_grad():
        ref = model.double()(x.double())
        model.float()
        err = float((fast(x).double() - ref).abs().max() / ref.abs().max())
    print(f"fast path: relative difference to the unfolded model in float64 {err:.1e}")
    with torch.inference_mode():
        times = interleaved(fns, args.rounds)
    return times


def make_clip(path: Path, frames: int, size: tuple[int, int], fps: float = 30.0) -> Path:
    """A moving textured ellipse on a gradient, MJPG (cheap to decode, as a webcam's)."""
    import cv2
    import numpy as np

    w, h = size
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.dstack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)]).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        cx = w * (0.3 + 0.4 * i / max(frames - 1, 1))
        inside = ((xx - cx) / (w * 0.2)) ** 2 + ((yy - h / 2) / (h * 0.3)) ** 2 < 1
        frame = base.copy()
        frame[inside] = texture[inside]
        writer.write(frame)
    writer.release()
    return path


def make_h264_clip(path: Path, frames: int, size: tuple[int, int], fps: int = 30) -> Path:
    """The same pictures as :func:`make_clip`, as H.264 in MP4 with an AAC tone (PyAV), as a phone records."""
    from fractions import Fraction

    import av
    import cv2
    import numpy as np

    avi = make_clip(path.with_suffix(".avi"), frames, size, fps)
    cap = cv2.VideoCapture(str(avi))
    w, h = size
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            f = av.VideoFrame.from_ndarray(frame, format="bgr24")
            f.pts = i
            out.mux(v.encode(f))
            i += 1
        out.mux(v.encode(None))
        n = round(i / fps * 48000)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
        for k in range(0, n, 1024):
            part = np.ascontiguousarray(np.repeat(tone[None, k : k + 1024], 2, axis=0))
            af = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = 48000, k, Fraction(1, 48000)
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    cap.release()
    return path


def bench_video(args, tmp: Path) -> list[tuple[float, float, float, float, float]]:
    """Per repeat: command frames/s, forward-only frames/s (before, after), and
    CPU seconds per frame of the command and of the forward alone.

    Wall-clock rates compare fairly only on an otherwise idle machine: under
    load the command, with its reader and writer threads, gets a larger share
    of the contended cores than a forward loop. CPU time per frame (all
    threads of this process) measures the work itself."""
    import contextlib
    import io
    import re

    import torch

    from face_segmentation_pytorch.models.linknet import fast_inference_model
    from face_segmentation_pytorch.video import main as video_main

    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.source == "h264":
        clip = make_h264_clip(tmp / "clip.mp4", args.frames, (w, h))
    else:
        clip = make_clip(tmp / "clip.avi", args.frames, (w, h))
    weights = tmp / "weights"
    weights.mkdir(exist_ok=True)
    torch.save(random_linknet().state_dict(), weights / "linknet_oneflow_model.pt")
    fast = fast_inference_model(random_linknet())
    x = torch.randn(1, 3, 256, 256)

    def forward_rate(n: int) -> tuple[float, float]:
        with torch.inference_mode():
            fast(x)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                fast(x)
        return n / (time.perf_counter() - t), (time.process_time() - c) / n

    rows = []
    for _ in range(args.video_repeats):
        before, cpu_before = forward_rate(max(10, args.frames // 4))
        err = io.StringIO()
        cpu = time.process_time()
        with contextlib.redirect_stderr(err):
            rc = video_main(
                [f"SOURCE={clip}", f"OUT={tmp / 'out.mp4'}", f"MODEL_PARAMS_DIR={weights}", "PROGRESS=false"]
            )
        if rc != 0:
            raise SystemExit(f"video command failed ({rc}): {err.getvalue()}")
        cpu = time.process_time() - cpu
        m = re.search(r"(\d+) frames in [\d.]+ s, ([\d.]+) frames/s", err.getvalue())
        wrote = re.search(r"wrote \S+ \((.*)\)$", err.getvalue().strip().splitlines()[-1])
        args.wrote = wrote.group(1) if wrote else "?"
        after, cpu_after = forward_rate(max(10, args.frames // 4))
        rows.append((float(m.group(2)), before, after, cpu / int(m.group(1)), (cpu_before + cpu_after) / 2))
    return rows


def bench_layers(args) -> list[tuple[str, float, float]]:
    import torch
    import torch.nn.functional as F

    from face_segmentation_pytorch.models.kernels import winograd_conv3x3

    rows = []
    for c, s in ((64, 64), (128, 32), (256, 16), (512, 8)):
        x = torch.randn(1, c, s, s).contiguous(memory_format=torch.channels_last)
        wt = (torch.randn(c, c, 3, 3) * 0.05).contiguous(memory_format=torch.channels_last)
        b = torch.randn(c)
        fns = {
            "direct": lambda: F.conv2d(x, wt, b, padding=1).relu_(),
            "winograd": lambda: winograd_conv3x3(x, wt, b, relu=True),
        }
        with torch.inference_mode():
            t = interleaved(fns, args.rounds * 3)
        rows.append((f"{c}x{c} at {s}x{s}", summary(t["direct"])[0], summary(t["winograd"])[0]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed forwards per variant (interleaved)")
    ap.add_argument("--frames", type=int, default=120, help="frames of the generated clip")
    ap.add_argument("--size", default="640x480", help="clip frame size WxH")
    ap.add_argument("--video-repeats", type=int, default=3, help="runs of the video command")
    ap.add_argument(
        "--source",
        choices=("mjpeg", "h264"),
        default="mjpeg",
        help="the clip: MJPEG AVI (a webcam's) or H.264 MP4 with AAC sound (a phone's)",
    )
    ap.add_argument("--layers", action="store_true", help="also compare Winograd and direct 3x3 per encoder shape")
    ap.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (set before torch starts)")
    ap.add_argument("--skip-video", action="store_true")
    args = ap.parse_args()
    if args.omp_passive:
        if "torch" in sys.modules:
            raise SystemExit("--omp-passive must be set before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    print(
        f"CPU: {cpu_model()}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average before: {load()}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        times = bench_forward(args, tmp)
        print()
        print("| LinkNet34 256x256, batch 1 | ms median | ms fastest | frames/s (median) |")
        print("|---|---:|---:|---:|")
        for k, v in times.items():
            med, best = summary(v)
            print(f"| {k} | {1000 * med:.1f} | {1000 * best:.1f} | {1 / med:.1f} |")
        fast_med = summary(times["fast path (FaceSegmenter's)"])[0]
        if "ONNX Runtime (own export)" in times:
            ort_med, ort_best = summary(times["ONNX Runtime (own export)"])
            fast_best = summary(times["fast path (FaceSegmenter's)"])[1]
            print(
                f"\nfast path vs ONNX Runtime: {ort_med / fast_med:.2f}x (medians), {ort_best / fast_best:.2f}x "
                f"(fastest runs); target 1.3x"
            )
        print(
            f"fast path vs PyTorch channels-last: {summary(times['PyTorch, channels-last'])[0] / fast_med:.2f}x (medians)"
        )
        if not args.skip_video:
            rows = bench_video(args, tmp)
            kind = "H.264 MP4 clip with AAC sound" if args.source == "h264" else "MJPEG AVI clip"
            print(
                f"\nvideo command on a {args.size} {kind} of {args.frames} frames (decode, segment, overlay, encode; "
                f"the output: {getattr(args, 'wrote', '?')}):"
            )
            print(
                "| run | command frames/s | forward-only frames/s (before, after) | wall ratio "
                "| CPU s/frame: command, forward | CPU ratio (forward / command) |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            for i, (cmd, before, after, cpu_cmd, cpu_fwd) in enumerate(rows, 1):
                print(
                    f"| {i} | {cmd:.1f} | {before:.1f}, {after:.1f} | {cmd / ((before + after) / 2):.2f} "
                    f"| {cpu_cmd:.3f}, {cpu_fwd:.3f} | {cpu_fwd / cpu_cmd:.2f} |"
                )
            wall = [cmd / ((b + a) / 2) for cmd, b, a, _, _ in rows]
            work = [f / c for _, _, _, c, f in rows]
            print(
                f"median wall ratio {statistics.median(wall):.2f} (meaningful on an idle machine only); "
                f"median CPU ratio {statistics.median(work):.2f} (the rate the command can reach on idle cores, "
                "as a fraction of the forward's); target 0.9"
            )
        if args.layers:
            print("\n| encoder 3x3 layer (batch 1) | direct ms | Winograd ms | Winograd speed-up |")
            print("|---|---:|---:|---:|")
            for name, d_ms, w_ms in bench_layers(args):
                print(f"| {name} | {1000 * d_ms:.2f} | {1000 * w_ms:.2f} | {d_ms / w_ms:.2f}x |")
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
