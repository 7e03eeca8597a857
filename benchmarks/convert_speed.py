"""Time and memory of converting a full-size (134M parameter) caffemodel.

Writes a caffemodel with random weights (same size and layout as the published
500x500 release, ~513 MiB), then measures, in a fresh subprocess each:
reading it with this library's converter, and (for comparison) loading the
resulting state_dict from .pt and .safetensors. Prints seconds (load plus a read
of every page) and the process's peak RSS, which includes torch's own ~0.3 GB.

    python benchmarks/convert_speed.py [--keep DIR]

Needs protobuf (to write the test file): pip install -r requirements-test.txt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t_import = time.perf_counter() - t0
path = sys.argv[1]
t0 = time.perf_counter()
if path.endswith(".caffemodel"):
    from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict
    sd = load_caffemodel_as_statedict(path)
elif path.endswith(".safetensors"):
    from safetensors.torch import load_file
    sd = load_file(path)
else:
    sd = torch.load(path, map_location="cpu", weights_only=True)
# Touch one value per 4 KiB page so lazily mapped files are really read.
for v in sd.values():
    v.reshape(-1)[::1024].sum()
elapsed = time.perf_counter() - t0
n = sum(v.numel() for v in sd.values())
# VmHWM is this process's own peak; ru_maxrss would include the parent's from before exec.
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": elapsed, "params": n, "peak_rss_mib": rss, "torch_import_s": t_import}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from caffe_writer import random_layers, write_caffemodel

    from face_segmentation_pytorch.convert import save_state_dict
    from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict

    tmp = args.keep or Path(tempfile.mkdtemp(prefix="fsp_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    model_path = tmp / "face_seg_fcn8s.caffemodel"
    if not model_path.exists():
        write_caffemodel(model_path, random_layers(21, 1, seed=0))
    sd = load_caffemodel_as_statedict(model_path)
    save_state_dict(sd, tmp / "face_seg_fcn8s.pt")
    save_state_dict(sd, tmp / "face_seg_fcn8s.safetensors")
    del sd
    print(f"{'file':32s} {'MiB':>7s} {'load s':>7s} {'peak RSS MiB':>13s}")
    for name in ("face_seg_fcn8s.caffemodel", "face_seg_fcn8s.pt", "face_seg_fcn8s.safetensors"):
        path = tmp / name
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        print(f"{name:32s} {path.stat().st_size / 2**20:7.0f} {r['seconds']:7.2f} {r['peak_rss_mib']:13.0f}")
    print(f"(torch import alone: {r['torch_import_s']:.2f} s; files in {tmp})")


if __name__ == "__main__":
    main()
