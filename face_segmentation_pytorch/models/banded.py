"""The VGG trunk without the work the 100-pixel pad makes redundant.

``conv1_1`` pads the image with 100 zeros on every side, so its output is the
constant ``relu(bias)`` everywhere except a window around the image. Each
later 3x3 convolution keeps that structure: its output is a per-channel
constant (``relu(W.sum(kh, kw) @ c + b)``) except in
(a) the centre window, grown by one pixel, and
(b) a ring along the map's edges, one pixel wider per convolution, where the
    convolution's own zero padding breaks the constant.
Max pooling maps constants to constants. So each convolution here fills its
output with the constant and computes only the centre window and the four
edge strips. The strips widen with depth, so from conv4 on a dense
convolution is cheaper; at 500x500 the trunk does 77% of the dense
multiply-adds (tests/test_model_oracle.py measures it). The constants are
exact and every window is convolved by ``kernels.conv3x3`` (Winograd for the
wide layers, see kernels.py), so the result equals Caffe's to float rounding;
the oracle tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels import conv3x3

__all__ = ["vgg_trunk"]

# Above this fraction of a map that must be computed anyway, a dense
# convolution is cheaper than several smaller ones.
_DENSE_ABOVE = 0.8
#: Output bytes of one band of a window (see _conv).
_REGION_BYTES = 16 * 2**20


@dataclass
class _Layout:
    """Where a map differs from its per-channel constant.

    ``rows``/``cols``: the centre window, half-open ``[start, stop)``.
    ``ring``: widths of the edge strips (top, bottom, left, right).
    ``const``: the per-channel value everywhere else, shape ``(C,)``,
    or ``None`` once the whole map is computed densely.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    ring: tuple[int, int, int, int]
    const: torch.Tensor | None


def _conv_region(x: torch.Tensor, conv, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """relu(conv(x)) on output rows [y0, y1) and cols [x0, x1) of a pad-1 3x3 conv."""
    H, W = x.shape[-2:]
    sy0, sy1, sx0, sx1 = max(y0 - 1, 0), min(y1 + 1, H), max(x0 - 1, 0), min(x1 + 1, W)
    # The convolution's own zero padding where the window meets the map edge.
    pads = (sx0 - (x0 - 1), (x1 + 1) - sx1, sy0 - (y0 - 1), (y1 + 1) - sy1)
    return conv3x3(x[..., sy0:sy1, sx0:sx1], conv, pads)


def _conv(x: torch.Tensor, conv, lay: _Layout) -> tuple[torch.Tensor, _Layout]:
    H, W = x.shape[-2:]
    rows = (max(lay.rows[0] - 1, 0), min(lay.rows[1] + 1, H))
    cols = (max(lay.cols[0] - 1, 0), min(lay.cols[1] + 1, W))
    t, b, left, right = (min(r + 1, n) for r, n in zip(lay.ring, (H, H, W, W)))
    computed = (rows[1] - rows[0]) * (cols[1] - cols[0]) + (t + b) * W + (left + right) * (H - t - b)
    if lay.const is None or computed > _DENSE_ABOVE * H * W:
        out = conv3x3(x, conv)
        return out, _Layout((0, H), (0, W), (H, H, W, W), None)
    const = F.relu(conv.weight.sum(dim=(2, 3)) @ lay.const + conv.bias)
    n = x.shape[0]
    fmt = (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
    out = const.view(1, -1, 1, 1).expand(n, -1, H, W).contiguous(memory_format=fmt)
    regions = [
        (rows[0], rows[1], cols[0], cols[1]),  # centre
        (0, t, 0, W),  # top strip
        (H - b, H, 0, W),  # bottom strip
        (t, H - b, 0, left),  # left strip
        (t, H - b, W - right, W),  # right strip
    ]
    for y0, y1, x0, x1 in regions:
        if y1 > y0 and x1 > x0:
            # In bands of rows: the copy of the input window and the result
            # exist one band at a time (conv1_2's centre alone is 65 MB).
            step = max(1, _REGION_BYTES // (n * (x1 - x0) * conv.out_channels * x.element_size()))
            for ya in range(y0, y1, step):
                yb = min(ya + step, y1)
                out[..., ya:yb, x0:x1] = _conv_region(x, conv, ya, yb, x0, x1)
    return out, _Layout(rows, cols, (t, b, left, right), const)


def _pool(x: torch.Tensor, pool, lay: _Layout) -> tuple[torch.Tensor, _Layout]:
    H, W = x.shape[-2:]
    out = pool(x)
    Ho, Wo = out.shape[-2:]
    if lay.const is None:
        return out, _Layout((0, Ho), (0, Wo), (Ho, Ho, Wo, Wo), None)
    # 2x2 windows, stride 2: output i covers input 2i and 2i+1.
    rows = (lay.rows[0] // 2, min((lay.rows[1] + 1) // 2, Ho))
    cols = (lay.cols[0] // 2, min((lay.cols[1] + 1) // 2, Wo))
    t, b, left, right = lay.ring
    ring = ((t + 1) // 2, Ho - (H - b) // 2, (left + 1) // 2, Wo - (W - right) // 2)
    return out, _Layout(rows, cols, ring, lay.const)


def vgg_trunk(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """conv1_1 ... pool5 of ``model`` on input ``x``.

    Returns:
        ``(pool3, pool4, pool5)``, equal to the dense computation.
    """
    H, W = x.shape[-2:]
    pad = model.conv1_1.padding[0]
    h = model.conv1_1(x).relu_()  # autograd is off here
    # Outputs whose 3x3 window misses the image see only zeros: relu(bias).
    lay = _Layout(
        (max(pad - 2, 0), min(pad + H, h.shape[-2])),
        (max(pad - 2, 0), min(pad + W, h.shape[-1])),
        (0, 0, 0, 0),
        F.relu(model.conv1_1.bias),
    )
    pools = []
    for block, n_convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(2 if block == 1 else 1, n_convs + 1):  # conv1_1 ran above
            h, lay = _conv(h, getattr(model, f"conv{block}_{i}"), lay)
        h, lay = _pool(h, getattr(model, f"pool{block}"), lay)
        pools.append(h)
    return pools[2], pools[3], pools[4]
