"""Multiply-accumulate count of the VGG trunk's 3x3 convolutions computed densely (for tests)."""

import torch
from torch import nn


def trunk_macs(model, x: torch.Tensor) -> int:
    """Output elements x input channels of conv1_2 ... conv5_3, run densely."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += out.numel() * mod.in_channels

    handles = [
        m.register_forward_hook(hook)
        for name, m in model.named_children()
        if isinstance(m, nn.Conv2d) and name.startswith("conv") and name != "conv1_1"
    ]
    old = model.fast_inference
    model.fast_inference = False
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.fast_inference = old
        for h in handles:
            h.remove()
    return total
