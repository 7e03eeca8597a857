"""CPU speed and memory of the network against OpenCV's Caffe runtime, in one run.

Writes a full-size caffemodel with random weights (the published layout), then
measures each variant in its own subprocess (so peak RSS is the variant's own),
round-robin over the variants so machine noise hits all of them alike, with a
warm-up forward per process. Prints one table: seconds per image (median),
images/s, effective GFLOP/s (this input size's FLOP count / time), fraction of
the machine's fp32 matmul rate measured in the same run, peak RSS, minor page
faults per timed forward (median), and speed relative to OpenCV DNN.

    python benchmarks/bench.py                      # 500x500, batch 1, 5 rounds
    python benchmarks/bench.py --size 300 --batch 4 --rounds 3 --variants opencv,eager

Needs the test requirements (OpenCV, protobuf, onnxruntime); the deploy prototxt
is the repository's test fixture (``tests/fixtures``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: opencv: OpenCV DNN on the caffemodel. onnxruntime: ONNX Runtime on this
#: package's ONNX export of the same weights. eager: plain PyTorch, NCHW, every
#: layer its own module. channels_last: the same in channels-last layout.
#: default: what FaceSegmenter and the CLI run on CPU (the package imported
#: before torch, so large tensors get huge pages; channels-last; the fast path:
#: constant padding skipped, Winograd 3x3 convolutions, fc6/fc7 as matrix
#: products). default_4k: the same with THP_MEM_ALLOC_ENABLE=0, as when a
#: script imports torch first.
VARIANTS = ("opencv", "onnxruntime", "eager", "channels_last", "default", "default_4k")


def count_flops(size: tuple[int, int], batch: int = 1) -> float:
    """Multiply-adds x 2 of every convolution and deconvolution at this input size."""
    import torch
    from torch import nn

    from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet

    with torch.device("meta"):
        model = FaceSegmentationNet()
    model.fast_inference = False  # count the dense network, the common yardstick
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, nn.ConvTranspose2d):
            total += 2.0 * inp[0].numel() * mod.out_channels * k
        else:
            total += 2.0 * out.numel() * mod.in_channels * k

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(batch, 3, *size, device="meta"))
    return total


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def _child(args) -> None:
    """Run one variant: load, warm up, time ``--repeats`` forwards, print JSON."""
    import numpy as np

    x = np.random.default_rng(0).uniform(-120, 130, size=(args.batch, 3, args.size, args.size)).astype(np.float32)
    if args.child == "opencv":
        import cv2

        net = cv2.dnn.readNetFromCaffe(
            str(Path(args.dir) / "deploy.prototxt"), str(Path(args.dir) / "face_seg_fcn8s.caffemodel")
        )

        def forward():
            net.setInput(x)
            return net.forward("score")
    elif args.child == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
        session = ort.InferenceSession(
            str(Path(args.dir) / "face_seg_fcn8s.onnx"), opts, providers=["CPUExecutionProvider"]
        )

        def forward():
            return session.run(["score"], {"data": x})[0]
    else:
        if args.child.startswith("default"):
            import face_segmentation_pytorch  # noqa: F401  (before torch, as the CLI does)
        import torch

        from face_segmentation_pytorch import FaceSegmentationNet, load_state_dict_file

        sd = load_state_dict_file(Path(args.dir) / "face_seg_fcn8s.pt")  # as FaceSegmenter loads it
        model = FaceSegmentationNet.from_state_dict(sd).eval()
        del sd
        t = torch.from_numpy(x)
        model.fast_inference = args.child.startswith("default")
        if args.child != "eager":
            model = model.channels_last_()  # what FaceSegmenter does

        def forward():
            with torch.inference_mode():
                return model(t)

    forward()  # warm-up
    times, faults = [], []
    for _ in range(args.repeats):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    print(json.dumps({"times": times, "rss_mib": rss, "faults": faults}))


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return text.split("[")[1].split("]")[0] if "[" in text else text.strip()


def _reference_prototxt() -> Path:
    return ROOT / "tests" / "fixtures" / "face_seg_fcn8s_deploy.prototxt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds (one process per variant per round)")
    ap.add_argument("--repeats", type=int, default=1, help="timed forwards per process after the warm-up")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dir", help="reuse (or keep) the generated model files here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from caffe_writer import random_layers, write_caffemodel

    from face_segmentation_pytorch.convert import save_state_dict
    from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fsp_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "face_seg_fcn8s.caffemodel").exists():
        write_caffemodel(folder / "face_seg_fcn8s.caffemodel", random_layers(21, 1, seed=0))
    if not (folder / "face_seg_fcn8s.pt").exists():
        save_state_dict(
            load_caffemodel_as_statedict(folder / "face_seg_fcn8s.caffemodel"), folder / "face_seg_fcn8s.pt"
        )
    (folder / "deploy.prototxt").write_text(_reference_prototxt().read_text())
    if "onnxruntime" in args.variants and not (folder / "face_seg_fcn8s.onnx").exists():
        from face_segmentation_pytorch import FaceSegmentationNet
        from face_segmentation_pytorch.export import export_onnx

        sd = torch.load(folder / "face_seg_fcn8s.pt", weights_only=True)
        export_onnx(FaceSegmentationNet.from_state_dict(sd), folder / "face_seg_fcn8s.onnx")
        del sd

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    flops = count_flops((args.size, args.size), args.batch)
    results: dict[str, dict] = {v: {"times": [], "rss": [], "faults": []} for v in variants}
    for r in range(args.rounds):
        for v in variants:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                v,
                "--dir",
                str(folder),
                "--size",
                str(args.size),
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
            ]
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=dict(env, THP_MEM_ALLOC_ENABLE="0") if v == "default_4k" else env,
            )
            if out.returncode != 0:
                sys.exit(f"error: variant {v} failed:\n{out.stderr[-2000:]}")
            data = json.loads(out.stdout.strip().splitlines()[-1])
            results[v]["times"] += data["times"]
            results[v]["rss"].append(data["rss_mib"])
            results[v]["faults"] += data["faults"]
            print(f"round {r + 1}/{args.rounds} {v}: {min(data['times']):.3f} s", file=sys.stderr)
    peak_after = matmul_gflops()

    import cv2

    try:
        import onnxruntime

        ort_version = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort_version = ""
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads {args.threads}; "
        f"torch {torch.__version__}, OpenCV {cv2.__version__}{ort_version}"
    )
    print(
        f"THP_MEM_ALLOC_ENABLE for eager/channels_last: {env.get('THP_MEM_ALLOC_ENABLE', 'unset')}; "
        f"/sys/kernel/mm/transparent_hugepage/enabled: {_thp_mode()}"
    )
    print(
        f"input {args.batch}x3x{args.size}x{args.size}: {flops / 1e9:.0f} GFLOP per batch; "
        f"fp32 matmul {peak:.0f} GFLOP/s before, {peak_after:.0f} after"
    )
    base = statistics.median(results["opencv"]["times"]) if "opencv" in results else None
    print(
        f"{'variant':16s} {'s/img':>7s} {'img/s':>7s} {'GFLOP/s':>8s} {'of matmul':>9s} {'peak RSS MiB':>13s} "
        f"{'faults/fwd':>10s} {'vs OpenCV':>9s}"
    )
    for v in variants:
        t = statistics.median(results[v]["times"])
        per_img = t / args.batch
        gflops = flops / t / 1e9
        ratio = f"{base / t:.2f}x" if base else "-"
        print(
            f"{v:16s} {per_img:7.3f} {1 / per_img:7.3f} {gflops:8.1f} {gflops / peak:9.2f} "
            f"{max(results[v]['rss']):13.0f} {statistics.median(results[v]['faults']):10.0f} {ratio:>9s}"
        )


if __name__ == "__main__":
    main()
