"""Start-up: time from process start to the first result, per weights format.

Writes full-size random weights (the published layout) as ``.pt``,
``.safetensors`` and ``.caffemodel`` in three folders and a 500x500 JPEG, then
runs the CLI exactly as the README shows it, each run a fresh process, on the
one image. The process's wall time is the time to a first result; the CLI's
own summary (images/s, timed from when the model is ready) gives the image's
share, and the rest is start-up: interpreter, imports, finding and loading the
weights. Also times ``import face_segmentation_pytorch`` alone. Medians over
``--rounds``, formats round-robin.

    python benchmarks/startup.py [--rounds 3] [--keep DIR]

Needs protobuf and safetensors (pip install -r requirements-test.txt safetensors).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = (".pt", ".safetensors", ".caffemodel")


def _timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return elapsed, out.stderr


def _cli_run(weights: Path, images: Path) -> tuple[float, float]:
    """(wall seconds, seconds the CLI spent on the image) for one CLI process
    writing into a fresh OUT_DIR, so nothing is skipped as already done."""
    out = Path(tempfile.mkdtemp(prefix="out_", dir=images.parent))
    try:
        wall, stderr = _timed(
            [
                sys.executable,
                "-m",
                "face_segmentation_pytorch",
                f"MODEL_PARAMS_DIR={weights}",
                f"IMGS_DIR={images}",
                f"OUT_DIR={out}",
                "PROGRESS=false",
            ]
        )
        if len(list(out.glob("*__heatmap.png"))) != 1:
            sys.exit(f"error: the CLI did not write the heatmap in {out}:\n{stderr[-2000:]}")
        rate = re.search(r"1 images done.*?([0-9.]+) images/s", stderr)
        if rate is None:
            sys.exit(f"error: no summary line in the CLI's output:\n{stderr[-2000:]}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return wall, 1.0 / float(rate.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from caffe_writer import random_layers, write_caffemodel

    from face_segmentation_pytorch.convert import save_state_dict
    from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict

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
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "img.jpg", quality=90)

    walls: dict[str, list[float]] = {ext: [] for ext in FORMATS}
    image_s: dict[str, list[float]] = {ext: [] for ext in FORMATS}
    imports: list[float] = []
    for r in range(args.rounds):
        imports.append(_timed([sys.executable, "-c", "import face_segmentation_pytorch"])[0])
        for ext in FORMATS:
            wall, one = _cli_run(dirs[ext], images)
            walls[ext].append(wall)
            image_s[ext].append(one)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"{os.cpu_count()} cores; python {sys.version.split()[0]}; files in {tmp}")
    print(
        f"import face_segmentation_pytorch (fresh process, with interpreter start): {statistics.median(imports):.2f} s"
    )
    print(f"{'weights file':14s} {'first result s':>15s} {'the image s':>12s} {'start-up s':>11s}")
    for ext in FORMATS:
        wall, one = statistics.median(walls[ext]), statistics.median(image_s[ext])
        print(f"{ext:14s} {wall:15.2f} {one:12.2f} {wall - one:11.2f}")


if __name__ == "__main__":
    main()
