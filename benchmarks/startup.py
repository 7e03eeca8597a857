"""Start-up: time from process start to the first result, per weights format.

Writes full-size random weights (the published layout) as ``.pt``,
``.safetensors`` and ``.caffemodel`` in three folders and 500x500 JPEGs, then
runs the CLI exactly as the README shows it, each run a fresh process, on one
image and on two. The one-image run is the whole time to a first mask; the
difference between the two runs is the cost of an image, so one run minus that
is the start-up (interpreter, imports, weights, first-call set-up). Also times
``import face_segmentation_pytorch`` alone. Medians over ``--rounds``,
formats round-robin.

    python benchmarks/startup.py [--rounds 3] [--keep DIR]

Needs protobuf and safetensors (pip install -r requirements-test.txt safetensors).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = (".pt", ".safetensors", ".caffemodel")


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return elapsed


def _cli_run(weights: Path, images: Path, n: int) -> float:
    """Seconds for one CLI process on ``images`` into a fresh OUT_DIR (so nothing is skipped)."""
    out = Path(tempfile.mkdtemp(prefix="out_", dir=images.parent))
    try:
        seconds = _timed([
            sys.executable, "-m", "face_segmentation_pytorch",
            f"MODEL_PARAMS_DIR={weights}", f"IMGS_DIR={images}", f"OUT_DIR={out}", "PROGRESS=false",
        ])
        written = sorted(out.glob("*__heatmap.png"))
        if len(written) != n:
            sys.exit(f"error: the CLI wrote {len(written)} heatmaps for {n} images in {out}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from caffe_writer import random_layers, write_caffemodel

    from face_segmentation_pytorch.caffe import load_caffemodel_as_statedict
    from face_segmentation_pytorch.convert import save_state_dict

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="fsp_startup_"))
    dirs = {ext: tmp / f"weights{ext.replace('.', '_')}" for ext in FORMATS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    caffemodel = dirs[".caffemodel"] / "face_seg_fcn8s.caffemodel"
    if not caffemodel.exists():
        write_caffemodel(caffemodel, random_layers(21, 1, seed=0))
    sd = None
    for ext in (".pt", ".safetensors"):
        if not (dirs[ext] / f"face_seg_fcn8s{ext}").exists():
            sd = sd or load_caffemodel_as_statedict(caffemodel)
            save_state_dict(sd, dirs[ext] / f"face_seg_fcn8s{ext}")
    del sd
    rng = np.random.default_rng(0)
    for n in (1, 2):
        imgs = tmp / f"images_{n}"
        imgs.mkdir(exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (500, 500, 3), dtype=np.uint8)).save(imgs / f"img{i}.jpg", quality=90)

    times: dict[str, dict[int, list[float]]] = {ext: {1: [], 2: []} for ext in FORMATS}
    imports: list[float] = []
    for r in range(args.rounds):
        imports.append(_timed([sys.executable, "-c", "import face_segmentation_pytorch"]))
        for ext in FORMATS:
            for n in (1, 2):
                times[ext][n].append(_cli_run(dirs[ext], tmp / f"images_{n}", n))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"{os.cpu_count()} cores; python {sys.version.split()[0]}; files in {tmp}")
    print(f"import face_segmentation_pytorch (fresh process, with interpreter start): {statistics.median(imports):.2f} s")
    print(f"{'weights file':14s} {'first result s':>15s} {'per image s':>12s} {'start-up s':>11s}")
    for ext in FORMATS:
        one, two = statistics.median(times[ext][1]), statistics.median(times[ext][2])
        per_image = two - one
        print(f"{ext:14s} {one:15.2f} {per_image:12.2f} {one - per_image:11.2f}")


if __name__ == "__main__":
    main()
