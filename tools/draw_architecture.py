"""Draw the network as built by FaceSegmentationNet, with each layer's output shape.

The layers and shapes come from running the model itself on the meta device
(no weights, no compute), so the figure cannot drift from the code.

    pip install matplotlib
    python tools/draw_architecture.py assets/architecture.png [--size 500]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from face_segmentation_pytorch.models.fcn8s import Crop, FaceSegmentationNet, Scale


def trace(size: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(module name, kind, output shape) in call order, on the meta device."""
    with torch.device("meta"):
        model = FaceSegmentationNet()
    order: list[tuple[str, str, tuple[int, ...]]] = []
    kinds = {
        nn.Conv2d: "conv",
        nn.ConvTranspose2d: "deconv",
        nn.MaxPool2d: "pool",
        Crop: "crop",
        Scale: "scale",
    }
    for name, module in model.named_children():
        kind = next((k for t, k in kinds.items() if isinstance(module, t)), None)
        if kind:
            module.register_forward_hook(
                lambda m, i, o, name=name, kind=kind: order.append((name, kind, tuple(o.shape[1:])))
            )
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return order


COLORS = {"conv": "#9ecae1", "pool": "#fdd0a2", "deconv": "#a1d99b", "crop": "#dadaeb", "scale": "#fcbba1"}


def draw(order, path: str, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    branch = {"scale_pool4", "score_pool4", "score_pool4c", "scale_pool3", "score_pool3", "score_pool3c"}
    trunk = [o for o in order if o[0] not in branch]
    side = [o for o in order if o[0] in branch]
    fig_h = 0.42 * len(trunk) + 1.5
    fig, ax = plt.subplots(figsize=(9, fig_h))
    ax.set_xlim(0, 9)
    ax.set_ylim(-len(trunk) - 1, 1.2)
    ax.axis("off")
    ax.text(
        0.2,
        0.6,
        f"FaceSegmentationNet (FCN-8s, VGG-16), input 3x{size}x{size}, BGR minus mean",
        fontsize=11,
        weight="bold",
    )
    pos = {}

    def box(x, y, name, kind, shape):
        ax.add_patch(
            FancyBboxPatch((x, y - 0.16), 3.6, 0.32, boxstyle="round,pad=0.02", fc=COLORS[kind], ec="#555555", lw=0.6)
        )
        ax.text(x + 0.1, y, f"{name}", fontsize=8, va="center", weight="bold")
        ax.text(x + 3.5, y, "x".join(map(str, shape)), fontsize=7.5, va="center", ha="right")
        pos[name] = (x, y)

    for i, (name, kind, shape) in enumerate(trunk):
        box(0.3, -i, name, kind, shape)
    anchor = {"scale_pool4": "pool4", "scale_pool3": "pool3"}
    y = None
    for name, kind, shape in side:
        y = pos[anchor[name]][1] if name in anchor else y - 0.45
        box(4.9, y, name, kind, shape)
        if name in anchor:
            ax.annotate("", xy=(4.9, y), xytext=(3.9, y), arrowprops=dict(arrowstyle="->", lw=0.7))
    for crop, target in (("score_pool4c", "upscore2"), ("score_pool3c", "upscore_pool4")):
        cy = pos[crop][1]
        ty = pos[target][1]
        ax.annotate(
            "", xy=(3.9, ty), xytext=(4.9, cy), arrowprops=dict(arrowstyle="->", lw=0.7, connectionstyle="arc3,rad=0.2")
        )
        ax.text(4.1, (cy + ty) / 2, "+ (fuse)", fontsize=7, color="#333333")
    handles = [plt.Rectangle((0, 0), 1, 1, fc=c, ec="#555555") for c in COLORS.values()]
    ax.legend(
        handles,
        [
            "convolution (ReLU after VGG/fc layers)",
            "max pool 2x2, ceil mode",
            "fixed bilinear deconvolution",
            "crop (Caffe offsets 5, 9, 31)",
            "fixed scale (0.01, 0.0001)",
        ],
        loc="lower right",
        fontsize=7.5,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("--size", type=int, default=500)
    args = ap.parse_args()
    draw(trace(args.size), args.output, args.size)


if __name__ == "__main__":
    main()
