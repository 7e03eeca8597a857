"""Training speed of both families: images/s and peak memory per batch size.

Each configuration runs in its own subprocess, so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own. A step is what
the trainer does per batch: forward, the recipe's loss, backward, optimizer
step (SGD with momentum, only parameters that require gradients), in the
trainer's layout (channels-last); fp32 on the CPU, optionally AMP on CUDA.
Inputs are random tensors of the trained size, so the numbers are the
network's; the data pipeline (decode, augment, normalise) is measured
separately per sample (``--data``), and with WORKERS > 0 it runs beside the
network.

    python benchmarks/train_speed.py                       # both families, batch 1 2 4 8, CPU
    python benchmarks/train_speed.py --steps 3 --batch-sizes 1 4
    python benchmarks/train_speed.py --device cuda --amp   # where CUDA exists
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (name, weights entry, input side, constructor description)
CONFIGS = {
    "linknet34": ("linknet34_oneflow", 256, "LinkNet34 (21.8M parameters) at 256x256, the recipe's size"),
    "fcn8s": ("fcn8s_300_no_aug", 300, "FCN-8s (134M parameters, 2 classes) at 300x300"),
    "fcn8s_slim16": ("fcn8s_300_no_aug", 300, "FCN-8s channel divisor 16 (0.5M parameters) at 300x300"),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def one(config: str, batch: int, steps: int, device: str, amp: bool, threads: int | None) -> dict:
    """Time ``steps`` training steps (after one warm-up step) in this process."""
    import torch

    from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet
    from face_segmentation_pytorch.models.linknet import LinkNet34
    from face_segmentation_pytorch.training.losses import SegmentationLoss
    from face_segmentation_pytorch.training.trainer import make_optimizer

    if threads:
        torch.set_num_threads(threads)
    _, size, _ = CONFIGS[config]
    torch.manual_seed(0)
    if config == "linknet34":
        model = LinkNet34()
    else:
        model = FaceSegmentationNet(2, channel_divisor=16 if config == "fcn8s_slim16" else 1)
    dev = torch.device(device)
    model = model.to(dev).train().to(memory_format=torch.channels_last)
    opt = make_optimizer(model, {"OPTIMIZER": "sgd", "LR": 1e-3, "WEIGHT_DECAY": 5e-4})
    loss_fn = SegmentationLoss(1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=amp) if dev.type == "cuda" else None
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    target = (torch.rand(batch, size, size, device=dev) > 0.5).float()

    def step():
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x), target)
        opt.zero_grad(set_to_none=True)
        if scaler is not None and amp:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "config": config,
        "batch": batch,
        "size": size,
        "steps": steps,
        "images_per_s": batch * steps / elapsed,
        "s_per_step": elapsed / steps,
        "peak_rss_mib": rss_kib / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }


def data_speed(n: int = 64, size: int = 256) -> dict:
    """Samples/s of the training data pipeline (PNG decode, flip, rotation, normalise), one process."""
    import tempfile

    from face_segmentation_pytorch.pipeline.weights import WEIGHTS
    from face_segmentation_pytorch.training.data import SegmentationDataset, discover, make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_dataset(tmp, n, size=size)
        data = discover(tmp, val_fraction=0, progress=False)
        ds = SegmentationDataset(data.train, WEIGHTS["linknet34_oneflow"].preprocessing, size, augment=True)
        ds[0]
        start = time.perf_counter()
        for i in range(n):
            ds[i]
        elapsed = time.perf_counter() - start
    return {"samples_per_s": n / elapsed, "size": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["linknet34", "fcn8s", "fcn8s_slim16"], choices=list(CONFIGS))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--amp", action="store_true", help="CUDA: float16 autocast with a gradient scaler")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--data", action="store_true", help="also measure the data pipeline")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps, device, args.amp, args.threads)))
        return
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"# training speed, {when}")
    print(
        f"# {cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start; "
        f"torch {torch.__version__}, device {device}{' AMP' if args.amp else ''}"
    )
    print()
    print(
        "| network | input | batch | images/s | s/step | peak RSS MiB |"
        + (" peak CUDA MiB |" if device == "cuda" else "")
    )
    print("|---|---|---|---|---|---|" + ("---|" if device == "cuda" else ""))
    for config in args.configs:
        for batch in args.batch_sizes:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                config,
                str(batch),
                "--steps",
                str(args.steps),
                "--device",
                device,
            ]
            if args.amp:
                cmd.append("--amp")
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {config} | | {batch} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            extra = f" {r['peak_cuda_mib']:.0f} |" if device == "cuda" else ""
            print(
                f"| {config} | {r['size']}x{r['size']} | {batch} | {r['images_per_s']:.2f} | {r['s_per_step']:.2f} "
                f"| {r['peak_rss_mib']:.0f} |{extra}",
                flush=True,
            )
    if args.data:
        d = data_speed()
        print(
            f"\ndata pipeline (PNG decode, flip, rotation, normalise) at {d['size']}x{d['size']}: "
            f"{d['samples_per_s']:.0f} samples/s in one process"
        )


if __name__ == "__main__":
    main()
