"""Memory of a long batch run: does it stay flat as images go by?

Writes N small JPEGs, runs the CLI on them (``PIPELINE=processes`` by default;
``--pipeline threads`` for the other), and samples the resident memory of the
main process and of its worker processes every 0.2 s from /proc (Linux). Prints
the sum at each tenth of the run: with bounded queues it rises while the workers
start and the weights load, then stays level, whatever N is.

    python benchmarks/pipeline_memory.py [--images 2000] [--size 96] [--pipeline processes] [--workers 2]

A slim random FCN-8s (channels / 16; ``--full`` for the full-size one) at
``INPUT_SIZE=64``, so that the forward is short and the run is mostly image
work, the part that could pile up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96, help="side of the generated JPEGs")
    ap.add_argument("--pipeline", default="processes")
    ap.add_argument("--workers", default="2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="full-size weights (the forward then dominates)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from face_segmentation_pytorch import FaceSegmentationNet

    tmp = Path(tempfile.mkdtemp(prefix="fsp_memory_"))
    wdir = tmp / "weights"
    wdir.mkdir()
    torch.manual_seed(0)
    net = FaceSegmentationNet() if args.full else FaceSegmentationNet(channel_divisor=16)
    torch.save(net.state_dict(), wdir / "face_seg_fcn8s.pt")
    imgs = tmp / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        Image.fromarray(base).resize((args.size, args.size), Image.BICUBIC).save(imgs / f"{i:06d}.jpg", quality=90)
    out = tmp / "out"
    cmd = [
        sys.executable,
        "-m",
        "face_segmentation_pytorch",
        f"MODEL_PARAMS_DIR={wdir}",
        f"IMGS_DIR={imgs}",
        f"OUT_DIR={out}",
        "INPUT_SIZE=64",
        f"BATCH_SIZE={args.batch}",
        f"PIPELINE={args.pipeline}",
        f"WORKERS={args.workers}",
        "PROGRESS=false",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, int, int]] = []  # (outputs written, main KiB, workers KiB)
    while proc.poll() is None:
        done = sum(1 for _ in out.glob("*__heatmap.png")) if out.exists() else 0
        kids = _children(proc.pid)
        samples.append((done, _rss_kib(proc.pid), sum(_rss_kib(c) for c in kids)))
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0:
        sys.exit(f"error: the CLI failed:\n{err[-2000:]}")
    rate = re.search(r"([0-9.]+) images/s", err.strip().splitlines()[-1])
    print(
        f"{args.images} JPEGs {args.size}x{args.size}, PIPELINE={args.pipeline}, WORKERS={args.workers}, "
        f"batch {args.batch}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{rate.group(1) if rate else '?'} images/s"
    )
    print("| written | main MiB | workers MiB | total MiB |")
    print("|---|---|---|---|")
    for tenth in range(1, 11):
        target = args.images * tenth // 10
        hit = next((s for s in samples if s[0] >= target), samples[-1])
        print(f"| {hit[0]} | {hit[1] / 1024:.0f} | {hit[2] / 1024:.0f} | {(hit[1] + hit[2]) / 1024:.0f} |")
    peak = max(s[1] + s[2] for s in samples)
    print(f"peak total: {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
