"""Per-layer timings behind the fast path's choices, at the published net's shapes.

For every 3x3 layer of the 500x500 network (dense map sizes), times oneDNN's
direct convolution (channels-last, ReLU in place) against
``kernels.winograd_conv3x3`` and says which one ``kernels.use_winograd``
picks; for fc6 and fc7, ``nn.Conv2d`` against ``kernels.conv_as_matmul``; and,
with ``--bands``, conv3_2 and conv4_2 under several Winograd band sizes.
Medians of ``--repeats`` calls after a warm-up, random weights, one process.

    python benchmarks/layers.py [--repeats 7] [--bands]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import face_segmentation_pytorch  # noqa: F401  (before torch, as the CLI: huge pages)
from face_segmentation_pytorch.models import kernels

# (name, input channels, output channels, map side) at a 500x500 input.
LAYERS_3X3 = [
    ("conv1_2", 64, 64, 698),
    ("conv2_1", 64, 128, 349),
    ("conv2_2", 128, 128, 349),
    ("conv3_1", 128, 256, 175),
    ("conv3_2", 256, 256, 175),
    ("conv4_1", 256, 512, 88),
    ("conv4_2", 512, 512, 88),
    ("conv5_1", 512, 512, 44),
]


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _conv(c: int, k: int, size: int) -> nn.Conv2d:
    conv = nn.Conv2d(c, k, size).eval()
    nn.init.normal_(conv.weight, 0, (2.0 / (c * size * size)) ** 0.5)
    return conv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--bands", action="store_true", help="also sweep the Winograd band size")
    args = ap.parse_args()
    cl = torch.channels_last
    print(f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"{'layer':8s} {'C->K':>9s} {'map':>5s} {'direct ms':>10s} {'Winograd ms':>12s} {'speed-up':>9s} {'chosen':>9s}"
    )
    with torch.inference_mode():
        for name, c, k, side in LAYERS_3X3:
            conv = _conv(c, k, 3).to(memory_format=cl)
            x = torch.randn(1, c, side, side).relu().contiguous(memory_format=cl)
            direct = _median_s(lambda: F.conv2d(x, conv.weight, conv.bias, padding=1).relu_(), args.repeats)
            wino = _median_s(lambda: kernels.winograd_conv3x3(x, conv.weight, conv.bias, relu=True), args.repeats)
            chosen = "Winograd" if kernels.use_winograd(x, conv.weight) else "direct"
            print(
                f"{name:8s} {c:4d}->{k:<4d} {side:5d} {direct * 1e3:10.1f} {wino * 1e3:12.1f} {direct / wino:8.2f}x {chosen:>9s}"
            )
            del conv, x

        print(f"\n{'layer':8s} {'weight layout':>14s} {'nn.Conv2d ms':>13s} {'matmul ms':>10s} {'speed-up':>9s}")
        for name, c, k, size, side in (("fc6", 512, 4096, 7, 22), ("fc7", 4096, 4096, 1, 16)):
            conv = _conv(c, k, size)
            for layout in ("contiguous", "channels-last"):
                if layout == "channels-last":
                    conv = conv.to(memory_format=cl)
                x = torch.randn(1, c, side, side).relu().contiguous(memory_format=cl)
                dense = _median_s(lambda: conv(x), args.repeats)
                mm = _median_s(lambda: kernels.conv_as_matmul(x, conv), args.repeats)
                print(f"{name:8s} {layout:>14s} {dense * 1e3:13.1f} {mm * 1e3:10.1f} {dense / mm:8.2f}x")
            del conv

        if args.bands:
            default = kernels._WINOGRAD_BAND_BYTES
            sizes = (2, 4, 8, 16, 32, 64, 1024)
            print(f"\nWinograd band size (MB of transformed tiles), ms; default {default // 2**20} MB")
            print(f"{'layer':8s} " + " ".join(f"{s:>7d}" for s in sizes))
            try:
                for name, c, k, side in (LAYERS_3X3[4], LAYERS_3X3[6]):
                    conv = _conv(c, k, 3).to(memory_format=cl)
                    x = torch.randn(1, c, side, side).relu().contiguous(memory_format=cl)
                    row = []
                    for s in sizes:
                        kernels._WINOGRAD_BAND_BYTES = s * 2**20
                        row.append(
                            _median_s(
                                lambda: kernels.winograd_conv3x3(x, conv.weight, conv.bias, relu=True), args.repeats
                            )
                        )
                    print(f"{name:8s} " + " ".join(f"{t * 1e3:7.1f}" for t in row))
            finally:
                kernels._WINOGRAD_BAND_BYTES = default


if __name__ == "__main__":
    main()
