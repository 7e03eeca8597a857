"""Folder throughput of the CLI against the pure forward rate, in one run.

Writes N 500x500 JPEGs, then measures (a) the network's forward pass alone on
already-prepared inputs and (b) the CLI's whole job on the folder (decode,
resize, forward, resize back, PNG write; the CLI's own summary gives images/s),
each in a fresh subprocess, alternating, and prints both rates and their ratio.

    python benchmarks/folder_throughput.py [--images 8] [--rounds 2] [--batch 1] [--weights DIR]
        [--pipeline threads,processes] [--workers auto]

With several ``--pipeline`` values each round runs the CLI once per pipeline
(PIPELINE=threads / processes), so their rates come from the same conditions.

Without --weights a full-size random state_dict is generated (same layout and
cost as the published weights).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_FORWARD = r"""
import json, sys, time
import face_segmentation_pytorch as fsp  # before torch, as in the CLI (huge pages)
import torch
wdir, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seg = fsp.FaceSegmenter(params_dir=wdir, threshold=None, progress=False)
x = torch.randn(batch, 3, 500, 500) * 50
with torch.inference_mode():
    seg.model(x, as_pmap=True)  # warm-up
    t = time.perf_counter()
    for _ in range(max(1, n // batch)):
        seg.model(x, as_pmap=True)
    dt = time.perf_counter() - t
print(json.dumps({"images_per_s": max(1, n // batch) * batch / dt}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--weights", type=Path, help="MODEL_PARAMS_DIR to use (default: generated random weights)")
    ap.add_argument("--pipeline", default="auto", help="PIPELINE value(s) for the CLI, comma-separated")
    ap.add_argument("--workers", default="auto", help="WORKERS for the CLI")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from face_segmentation_pytorch import FaceSegmentationNet

    tmp = Path(tempfile.mkdtemp(prefix="fsp_folder_"))
    wdir = args.weights
    if wdir is None:
        wdir = tmp / "weights"
        wdir.mkdir()
        torch.manual_seed(0)
        torch.save(FaceSegmentationNet().state_dict(), wdir / "face_seg_fcn8s.pt")
    imgs = tmp / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((500, 500), Image.BICUBIC).save(imgs / f"img{i:03d}.jpg", quality=90)

    pipelines = args.pipeline.split(",")
    forward: list[float] = []
    folder: dict[str, list[float]] = {p: [] for p in pipelines}
    for r in range(args.rounds):
        out = subprocess.run(
            [sys.executable, "-c", _FORWARD, str(wdir), str(args.images), str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        forward.append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
        for pipeline in pipelines:
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "face_segmentation_pytorch",
                    f"MODEL_PARAMS_DIR={wdir}",
                    f"IMGS_DIR={imgs}",
                    f"OUT_DIR={tmp / f'out{r}_{pipeline}'}",
                    f"BATCH_SIZE={args.batch}",
                    "PROGRESS=false",
                    f"PIPELINE={pipeline}",
                    f"WORKERS={args.workers}",
                ],
                capture_output=True,
                text=True,
            )
            if cli.returncode != 0:
                sys.exit(f"error: the CLI failed:\n{cli.stderr[-2000:]}")
            rate = float(re.search(r"([0-9.]+) images/s", cli.stderr.strip().splitlines()[-1]).group(1))
            folder[pipeline].append(rate)
            print(
                f"round {r + 1}: forward {forward[-1]:.3f} img/s, folder ({pipeline}) {rate:.3f} img/s", file=sys.stderr
            )
    f = statistics.median(forward)
    print(f"{args.images} JPEGs 500x500, batch {args.batch}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"forward only: {f:.3f} images/s")
    for pipeline, rates in folder.items():
        c = statistics.median(rates)
        print(
            f"CLI on the folder (decode, run, write), PIPELINE={pipeline}: {c:.3f} images/s; folder / forward = {c / f:.2f}"
        )


if __name__ == "__main__":
    main()
