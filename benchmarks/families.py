"""Size, work and CPU speed of the two network families, as one markdown table.

* FCN-8s (``FaceSegmentationNet()``, the published 21-class topology) at
  500x500, random weights, eval, ``no_grad``: it takes its exact fast CPU path
  (banded trunk, Winograd, fc layers as matrix products).
* LinkNet34 (``LinkNet34()``) at 256x256, eval, ``no_grad``, in the default
  layout, in channels-last, and channels-last with BatchNorm folded into the
  convolutions (``fold_batchnorm``).

GFLOP per image counts only convolutions and transposed convolutions,
analytically, from forward hooks on one dense pass: ``2 * Cin * Cout * k * k
* Hout * Wout / groups`` for a convolution and the same with the *input* size
for a transposed convolution (each input pixel meets every tap). For FCN-8s
that is the dense count; its fast path skips part of that work (the region
the 100-pixel pad makes constant), so its real work is lower.

Seconds per image: batch 1, wall clock, torch's default thread count unless
``--threads`` says otherwise; the median of ``--fcn-repeats`` FCN-8s
forwards, and for each LinkNet34 variant of ``--rounds`` blocks of
``--repeats`` forwards, blocks of the variants alternating (see
:func:`median_seconds`); ``--warmup`` untimed forwards start every block.
The header gives the load average: on a shared machine, other processes'
load inflates every time (with more runnable threads than cores,
``--threads 1`` was measured steadier).

    python benchmarks/families.py [--repeats 10] [--rounds 4] [--fcn-repeats 3] [--warmup 2] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from torch import nn

import face_segmentation_pytorch  # noqa: F401  (before torch, as the CLI: huge pages)
from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet
from face_segmentation_pytorch.models.linknet import LinkNet34, fold_batchnorm


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def conv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 x multiply-adds) of every Conv2d / ConvTranspose2d for one forward of ``x``."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        per_pixel = 2 * mod.in_channels * mod.out_channels * k // mod.groups
        if isinstance(mod, nn.ConvTranspose2d):
            pixels = inp[0].shape[-2] * inp[0].shape[-1]
        else:
            pixels = out.shape[-2] * out.shape[-1]
        total += per_pixel * pixels * out.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total // x.shape[0]


def median_seconds(
    models: list[nn.Module], x: torch.Tensor, repeats: int, warmup: int, rounds: int = 1
) -> list[tuple[float, float]]:
    """Median and fastest forward time of each model over ``rounds`` blocks of ``repeats`` calls.

    Each block starts with ``warmup`` untimed calls. Blocks run model after
    model, in alternating order from round to round, so that load from other
    processes falls on all models alike. (Alternating models call by call
    instead was measured 2-5x slower for every model on oneDNN: switching
    models costs, and a deployed model does not switch.)
    """
    times: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    with torch.no_grad():
        for r in range(rounds):
            for i in order if r % 2 == 0 else order[::-1]:
                for _ in range(warmup):
                    models[i](x)
                for _ in range(repeats):
                    t = time.perf_counter()
                    models[i](x)
                    times[i].append(time.perf_counter() - t)
    return [(statistics.median(t), min(t)) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed LinkNet34 forwards per block")
    ap.add_argument("--fcn-repeats", type=int, default=3, help="timed FCN-8s forwards (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed forwards before each block")
    ap.add_argument("--rounds", type=int, default=4, help="blocks of --repeats per LinkNet34 variant")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    fcn = FaceSegmentationNet().eval()
    x = torch.randn(1, 3, 500, 500)
    flops = conv_flops(fcn, x)  # hooks: the dense path, every layer counted
    (secs,) = median_seconds([fcn], x, args.fcn_repeats, args.warmup)
    n = sum(p.numel() for p in fcn.parameters())
    rows.append(("FCN-8s (fast CPU path)", "500x500", n, flops, secs, args.fcn_repeats))
    del fcn

    linknet = LinkNet34().eval()
    x = torch.randn(1, 3, 256, 256)
    flops = conv_flops(linknet, x)
    n = sum(p.numel() for p in linknet.parameters())
    cl = LinkNet34().eval()
    cl.load_state_dict(linknet.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    folded = fold_batchnorm(cl)
    n_folded = sum(p.numel() for p in folded.parameters())
    secs = median_seconds([linknet, cl, folded], x, args.repeats, args.warmup, args.rounds)
    reps = args.repeats * args.rounds
    rows.append(("LinkNet34", "256x256", n, flops, secs[0], reps))
    rows.append(("LinkNet34, channels_last", "256x256", n, flops, secs[1], reps))
    rows.append(("LinkNet34, channels_last, BN folded", "256x256", n_folded, flops, secs[2], reps))

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"Date: {datetime.date.today().isoformat()}; torch {torch.__version__}; CPU: {cpu_model()}; "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; load average {load}"
    )
    print()
    print("| model | input | parameters | GFLOP / image | CPU s / image, median | fastest | runs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, size, n, flops, (med, best), reps in rows:
        print(f"| {name} | {size} | {n / 1e6:.2f} M | {flops / 1e9:.1f} | {med:.3f} | {best:.3f} | {reps} |")


if __name__ == "__main__":
    main()
