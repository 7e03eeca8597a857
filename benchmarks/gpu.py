"""GPU benchmark: precision, batch size, compilation, and the CLI against its own forward.

    python benchmarks/gpu.py                 # everything, prints markdown tables
    python benchmarks/gpu.py --json out.json --skip-compile --cli-images 96

Prints the GPU, torch, CUDA and cuDNN versions and a bfloat16 matrix-product peak
measured in the same run; then, for each precision and batch 1, 8 and 32 at 500x500
(FCN-8s, full size, random weights): ms per image, TFLOP/s (363 GFLOP per image,
the dense count), the fraction of that peak, peak memory, and the relative error
and mask disagreement against the same network in fp32 on the CPU (which the test
suite checks against Caffe to below 1e-5); LinkNet34 at 256x256 the same way; then
the CLI on a generated folder of 640x480 JPEGs against the forward alone at the same
settings, with PIPELINE=threads and PIPELINE=processes; then the video command on a
generated 640x480 clip (LinkNet34, batch 1) against LinkNet34's batch-1 forward.
Needs a CUDA device: without one it says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import face_segmentation_pytorch as fsp  # noqa: E402

FCN_GFLOP = 363.0  # per 500x500 image, dense count (README "Performance")
LINKNET_GFLOP = 11.6  # per 256x256 frame


def _sync():
    torch.cuda.synchronize()


def bf16_peak(n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def time_forward(seg, batch: torch.Tensor, repeats: int) -> float:
    for _ in range(3):
        seg._forward(batch)
    _sync()
    t = time.perf_counter()
    for _ in range(repeats):
        seg._forward(batch)
    _sync()
    return (time.perf_counter() - t) / repeats


def accuracy(seg, ref_pmap: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    got = seg._forward(x).cpu()
    err = float((got - ref_pmap).abs().max())
    flips = float(((got > 0.5) != (ref_pmap > 0.5)).float().mean())
    return err, flips


def family_rows(name, model_cpu, size, gflop, precisions, batches, compile_modes, repeats):
    rows = []
    rng = np.random.default_rng(0)
    x1 = torch.from_numpy(rng.uniform(-100, 130, (1, 3, size, size)).astype(np.float32))
    if name == "linknet34":
        x1 = x1 / 58.0
    cpu = fsp.FaceSegmenter(model_cpu, device="cpu", threshold=None)
    ref = cpu._forward(x1)
    for precision in precisions:
        for compile_ in compile_modes:
            try:
                seg = fsp.FaceSegmenter(model_cpu, device="cuda", threshold=None, precision=precision, compile=compile_)
            except ValueError as e:
                rows.append({"model": name, "precision": precision, "error": str(e)})
                continue
            err, flips = accuracy(seg, ref, x1)
            for b in batches:
                torch.cuda.reset_peak_memory_stats()
                xb = x1.repeat(b, 1, 1, 1)
                try:
                    s = time_forward(seg, xb, repeats)
                except torch.cuda.OutOfMemoryError:
                    rows.append(
                        {"model": name, "precision": precision, "compile": compile_, "batch": b, "error": "OOM"}
                    )
                    torch.cuda.empty_cache()
                    continue
                ms = 1000 * s / b
                tflops = gflop * b / s / 1000
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "compile": compile_,
                        "batch": b,
                        "ms_per_image": round(ms, 3),
                        "images_per_s": round(b / s, 1),
                        "tflops": round(tflops, 1),
                        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                        "max_abs_err_vs_cpu_fp32": err,
                        "mask_flips_vs_cpu_fp32": flips,
                    }
                )
            del seg
            torch.cuda.empty_cache()
    return rows


def cli_rows(weights_dir: Path, n_images: int, precisions, batch: int):
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        rng = np.random.default_rng(1)
        for i in range(n_images):
            yy, xx = np.mgrid[0:480, 0:640]
            img = np.stack([xx % 256, yy % 256, rng.integers(0, 255, (480, 640))], -1).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
        for precision in precisions:
            for pipeline in ("threads", "processes"):
                out = Path(tmp) / f"out_{precision}_{pipeline}"
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "face_segmentation_pytorch",
                        f"MODEL_PARAMS_DIR={weights_dir}",
                        f"IMGS_DIR={folder}",
                        f"OUT_DIR={out}",
                        "DEVICE=cuda",
                        f"PRECISION={precision}",
                        f"BATCH_SIZE={batch}",
                        "PROGRESS=false",
                        f"PIPELINE={pipeline}",
                    ],
                    capture_output=True,
                    text=True,
                )
                m = re.search(r"([0-9.]+) images/s", proc.stderr)
                rows.append(
                    {
                        "precision": precision,
                        "pipeline": pipeline,
                        "batch": batch,
                        "cli_images_per_s": float(m.group(1)) if m else None,
                        "returncode": proc.returncode,
                        "stderr_tail": proc.stderr[-500:],
                    }
                )
    return rows


def _video_bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsp_bench_video", ROOT / "benchmarks" / "video.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def video_rows(settings, frames: int, device: str = "cuda") -> list[dict]:
    """The video command (a subprocess, as a user runs it) on a generated 640x480
    MJPG clip, LinkNet34 at 256x256, batch 1, per ``(precision, compile)``.

    ``frames_per_s`` is the command's own summary; ``frames_per_s_after_compile``
    takes the compilation time it prints out of the elapsed time (a long clip
    makes the two close; compiling is a one-off per process)."""
    bench = _video_bench_module()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = bench.make_clip(tmp / "clip.avi", frames, (640, 480))
        weights = tmp / "weights"
        weights.mkdir()
        torch.save(bench.random_linknet().state_dict(), weights / "linknet_oneflow_model.pt")
        for precision, compile_ in settings:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "face_segmentation_pytorch.video",
                    f"SOURCE={clip}",
                    f"OUT={tmp / 'out.avi'}",
                    f"MODEL_PARAMS_DIR={weights}",
                    f"DEVICE={device}",
                    f"PRECISION={precision}",
                    f"COMPILE={str(compile_).lower()}",
                    "PROGRESS=false",
                ],
                capture_output=True,
                text=True,
            )
            m = re.search(r"(\d+) frames in ([\d.]+) s, ([\d.]+) frames/s", proc.stderr)
            c = re.search(r"compiled \(.*?\) in ([\d.]+) s", proc.stderr)
            row = {
                "precision": precision,
                "compile": compile_,
                "returncode": proc.returncode,
                "stderr_tail": proc.stderr[-500:],
            }
            if m:
                n, elapsed = int(m.group(1)), float(m.group(2))
                compile_s = float(c.group(1)) if c else 0.0
                row.update(
                    frames=n,
                    frames_per_s=float(m.group(3)),
                    compile_s=compile_s,
                    frames_per_s_after_compile=round(n / max(elapsed - compile_s, 1e-9), 1),
                )
            rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-compile", action="store_true")
    # Enough that the workers' start-up (spawn, import torch) is a small part of the run.
    ap.add_argument("--cli-images", type=int, default=1024)
    ap.add_argument("--video-frames", type=int, default=3000, help="frames of the generated 640x480 clip (0: skip)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device is visible; this benchmark measures GPUs (nothing was measured)", file=sys.stderr)
        return 1
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
    }
    info["bf16_matmul_peak_tflops"] = round(bf16_peak(), 1)
    print(json.dumps(info))
    torch.manual_seed(0)
    fcn = fsp.FaceSegmentationNet().eval()
    linknet = fsp.LinkNet34().eval()
    precisions = ("fp32", "tf32", "fp16", "bf16")
    compiles = (False,) if args.skip_compile else (False, True)
    rows = family_rows("fcn8s", fcn, 500, FCN_GFLOP, precisions, (1, 8, 32), compiles, args.repeats)
    rows += family_rows("linknet34", linknet, 256, LINKNET_GFLOP, precisions, (1, 32), compiles, args.repeats)
    peak = info["bf16_matmul_peak_tflops"]
    print(
        "| model | precision | compile | batch | ms/image | TFLOP/s | of bf16 peak | peak GiB | max err vs CPU fp32 | mask flips |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['precision']} | {r.get('compile', '')} | {r.get('batch', '')} | {r['error']} |")
            continue
        print(
            f"| {r['model']} | {r['precision']} | {r['compile']} | {r['batch']} | {r['ms_per_image']} | {r['tflops']} "
            f"| {r['tflops'] / peak:.0%} | {r['peak_gib']} | {r['max_abs_err_vs_cpu_fp32']:.1e} | {r['mask_flips_vs_cpu_fp32']:.4%} |"
        )
    with tempfile.TemporaryDirectory() as wdir:
        torch.save(fcn.state_dict(), Path(wdir) / "face_seg_fcn8s.pt")
        cli = cli_rows(Path(wdir), args.cli_images, ("fp32", "fp16"), 8)
    forward = {
        r["precision"]: r["images_per_s"]
        for r in rows
        if r.get("model") == "fcn8s" and r.get("batch") == 8 and not r.get("compile") and "error" not in r
    }
    print("| precision | PIPELINE | CLI images/s (batch 8) | forward images/s (batch 8) | ratio |")
    print("|---|---|---|---|---|")
    for r in cli:
        f = forward.get(r["precision"])
        ratio = f"{r['cli_images_per_s'] / f:.2f}" if f and r["cli_images_per_s"] else "-"
        print(f"| {r['precision']} | {r['pipeline']} | {r['cli_images_per_s']} | {f} | {ratio} |")
    video = []
    if args.video_frames:
        settings = [("fp32", False), ("fp16", False)] + ([] if args.skip_compile else [("fp16", True)])
        video = video_rows(settings, args.video_frames)
        link1 = {
            (r["precision"], r["compile"]): r["images_per_s"]
            for r in rows
            if r.get("model") == "linknet34" and r.get("batch") == 1 and "error" not in r
        }
        print("| precision | compile | video command frames/s (after compiling) | forward frames/s (batch 1) | ratio |")
        print("|---|---|---|---|---|")
        for r in video:
            f = link1.get((r["precision"], r["compile"]))
            got = r.get("frames_per_s_after_compile")
            ratio = f"{got / f:.2f}" if f and got else "-"
            print(f"| {r['precision']} | {r['compile']} | {r.get('frames_per_s')} ({got}) | {f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "forward": rows, "cli": cli, "video": video}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
