"""ENGINE=local against ENGINE=ray with 1 and 2 local actors, on one generated folder.

Writes N 500x500 JPEGs and runs the command line on them three times, each in a
fresh subprocess with its own OUT_DIR, exactly as a user would:

    python -m face_segmentation_pytorch IMGS_DIR=... OUT_DIR=... [ENGINE=ray RAY_NUM_ACTORS=k]

and times each run from outside: the whole command (interpreter, weights,
for Ray its start-up and actors), the time to the first finished output, and
the steady rate from the first to the last output (from the outputs' file
times, so the same clock for both engines). The overhead Ray adds per image is
reported twice: steady (1/rate_ray - 1/rate_local) and all-in ((wall_ray -
wall_local) / N, start-up spread over the N images).

    python benchmarks/ray_engine.py [--images 24] [--batch 1] [--weights DIR | --slim]

Without --weights a full-size random FCN-8s state_dict is generated (the
published weights' layout and cost). --slim uses a 1/16-width network instead,
where Ray's own cost per image shows more. Needs the [ray] extra.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _run(label: str, args: list[str], out: Path, n: int) -> dict:
    cmd = [sys.executable, "-m", "face_segmentation_pytorch", *args, f"OUT_DIR={out}", "PROGRESS=false"]
    start_wall = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"error: {label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    times = sorted(p.stat().st_mtime for p in out.glob("*__heatmap.png"))
    if len(times) != n:
        sys.exit(f"error: {label} wrote {len(times)} of {n} heatmaps")
    steady = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else float("nan")
    print(f"{label}: {wall:.1f} s; {proc.stderr.strip().splitlines()[-1]}", file=sys.stderr)
    return {"label": label, "wall": wall, "first": times[0] - start_wall, "steady": steady, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch", type=int, default=1)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--weights", type=Path, help="MODEL_PARAMS_DIR holding face_seg_fcn8s.pt (default: generated)")
    g.add_argument("--slim", action="store_true", help="a 1/16-width FCN-8s: Ray's cost per image shows more")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    try:
        import ray
    except ImportError:
        sys.exit("error: this benchmark needs the [ray] extra: pip install 'face_segmentation_pytorch[ray]'")

    tmp = Path(tempfile.mkdtemp(prefix="fsp_ray_bench_"))
    wdir = args.weights
    network = "given weights"
    if wdir is None:
        wdir = tmp / "weights"
        wdir.mkdir()
        torch.manual_seed(0)
        if args.slim:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from caffe_writer import random_layers

            from face_segmentation_pytorch.formats.caffe import CaffeLayer, caffe_layers_to_state_dict

            layers = random_layers(21, 16, seed=0, fixed="deploy")
            state, _ = caffe_layers_to_state_dict([CaffeLayer(k, "", b) for k, b in layers.items()])
            network = "FCN-8s at 1/16 width (random)"
        else:
            from face_segmentation_pytorch import FaceSegmentationNet

            state = FaceSegmentationNet().state_dict()
            network = "full FCN-8s (random weights, 134M parameters)"
        torch.save(state, wdir / "face_seg_fcn8s.pt")
    imgs = tmp / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((500, 500), Image.BICUBIC).save(imgs / f"img{i:03d}.jpg", quality=90)

    job = [f"MODEL_PARAMS_DIR={wdir}", f"IMGS_DIR={imgs}", f"BATCH_SIZE={args.batch}"]
    n = args.images
    runs = [
        _run("local", job, tmp / "out_local", n),
        _run("ray, 1 actor", [*job, "ENGINE=ray", "RAY_NUM_ACTORS=1"], tmp / "out_ray1", n),
        _run("ray, 2 actors", [*job, "ENGINE=ray", "RAY_NUM_ACTORS=2"], tmp / "out_ray2", n),
    ]
    local = runs[0]
    print(
        f"{n} JPEGs 500x500, batch {args.batch}, {network}; {_cpu_model()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, ray {ray.__version__}; "
        f"{datetime.date.today().isoformat()}; one run each"
    )
    print()
    print(
        "| engine | wall s | to first output s | images/s (wall) | images/s (steady) "
        "| Ray overhead per image, steady | Ray overhead per image, all-in |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        if r is local:
            steady_over = all_in = "-"
        else:
            steady_over = f"{1000 * (1 / r['steady'] - 1 / local['steady']):+.0f} ms"
            all_in = f"{1000 * (r['wall'] - local['wall']) / n:+.0f} ms"
        print(
            f"| {r['label']} | {r['wall']:.1f} | {r['first']:.1f} | {n / r['wall']:.2f} | {r['steady']:.2f} "
            f"| {steady_over} | {all_in} |"
        )


if __name__ == "__main__":
    main()
