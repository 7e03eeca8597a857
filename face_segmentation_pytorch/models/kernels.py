"""Exact CPU kernels for the inference path: Winograd 3x3 convolutions and
convolutions as one matrix product.

Both are mathematically equal to ``torch.nn.functional.conv2d``. The matrix
product sums the same products in another order. Winograd computes the same
convolution through fixed rational transforms; in fp32 its error is about
1e-5 of a layer's largest output (direct: 3e-7), and the whole network stays
below 1e-5 of Caffe's scores. ``tests/test_kernels.py`` and the oracle tests
check both.

Why they exist (measured on the project's 2-core machines, see README
"Performance"):

* ``winograd_conv3x3``: F(4x4, 3x3) needs 36 multiplications per 4x4 output
  tile and channel pair instead of 144, so the conv3-conv5 layers, whose cost
  is the channel-by-channel product, run 1.3x-2.6x faster than oneDNN's direct
  convolution. With few channels the transforms cost more than they save,
  hence :data:`WINOGRAD_MIN_CHANNEL_PRODUCT`.
* ``conv_as_matmul``: ``fc6`` is a 7x7 convolution with a 411 MB weight; oneDNN
  reorders that weight on every call, a plain matrix product reads it in place
  (2.1x-2.5x faster; fc7 1.4x).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["WINOGRAD_MIN_CHANNEL_PRODUCT", "conv3x3", "conv_as_matmul", "use_winograd", "winograd_conv3x3"]

#: 3x3 convolutions with at least this many (input x output) channel pairs use
#: Winograd on CPU: conv3_1 (128x256) and later. The transforms cost in
#: proportion to the channels, the saving to their product. Measured with
#: ``benchmarks/layers.py``: conv3_1 1.3x-1.4x faster, conv2_1 (64x128) 0.96x,
#: conv2_2 (128x128) 1.1x-1.2x, but the banded trunk computes only about half
#: its map, so that is at most ~7 ms of a 650 ms forward; it stays direct.
WINOGRAD_MIN_CHANNEL_PRODUCT = 128 * 256

# Lavin & Gray (2016), F(4x4, 3x3) with interpolation points 0, +-1, +-2, inf.
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_AT = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
#: Transformed tiles of a band of tile rows take at most about this many bytes.
#: Bands bound the extra memory for large maps and keep the working set in
#: cache (``benchmarks/layers.py --bands``: conv3_2 at 500x500 46 ms at 16 MB,
#: 64 ms as one band; conv4_2 within 5% from 8 MB up).
_WINOGRAD_BAND_BYTES = 16 * 2**20
_MATRICES: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _transforms(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2-d transforms as Kronecker products, so each one is a single matmul.

    ``B (36x36)`` takes a flattened 6x6 input tile to its 36 Winograd
    components, ``G (36x9)`` a flattened 3x3 kernel, ``A (16x36)`` the 36
    products back to a flattened 4x4 output tile.
    """
    key = (device, dtype)
    if key not in _MATRICES:

        def kron(rows):
            m = torch.tensor(rows, dtype=torch.float64)
            return torch.kron(m, m).to(device=device, dtype=dtype)

        _MATRICES[key] = (kron(_BT), kron(_G), kron(_AT))
    return _MATRICES[key]


def use_winograd(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv3x3` takes the Winograd path for this input and weight."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and tuple(weight.shape[2:]) == (3, 3)
        and weight.shape[0] * weight.shape[1] >= WINOGRAD_MIN_CHANNEL_PRODUCT
    )


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pads: tuple[int, int, int, int] = (1, 1, 1, 1),
    relu: bool = False,
) -> torch.Tensor:
    """3x3 stride-1 convolution by Winograd F(4x4, 3x3).

    Meant for float32 (:func:`use_winograd` checks): the transforms scale
    values by up to ~100, which bfloat16 or float16 cannot carry exactly.

    Args:
        x: ``(N, C, H, W)`` input, any memory format.
        weight: ``(K, C, 3, 3)``.
        bias: ``(K,)`` or ``None``.
        pads: Zero padding ``(left, right, top, bottom)``, as ``F.pad`` takes it.
        relu: Apply ``max(0, .)`` to the result.

    Returns:
        ``(N, K, Ho, Wo)`` in channels-last memory, equal to
        ``F.conv2d(F.pad(x, pads), weight, bias)`` (then ReLU) to float rounding.
    """
    n, c, h, w = x.shape
    k = weight.shape[0]
    left, right, top, bottom = pads
    ho, wo = h + top + bottom - 2, w + left + right - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"winograd_conv3x3: a {h}x{w} input with pads {pads} has no 3x3 output")
    th, tw = math.ceil(ho / 4), math.ceil(wo / 4)
    bt, g, at = _transforms(x.device, x.dtype)

    # Tiles of 6x6 at stride 4 over the input padded to 4*th+2 x 4*tw+2 (the
    # extra zeros only feed outputs that are cropped away).
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, left, 4 * tw + 2 - w - left, top, 4 * th + 2 - h - top))
    # The kernel transform is small (at most 36 x 512 x 512, ~3.5 ms), so it is
    # recomputed instead of keeping a 4x larger copy of every weight resident.
    wk = weight.permute(0, 2, 3, 1).reshape(k, 9, c)
    u = torch.matmul(g, wk).permute(1, 2, 0)  # 36, C, K (strided; bmm takes it as is)
    out = torch.empty((n, th, 4, tw, 4, k), dtype=x.dtype, device=x.device)
    # Bands of tile rows, so the transformed tiles (2.25x the map) never exist
    # for a whole large map at once.
    rows = max(1, _WINOGRAD_BAND_BYTES // (36 * tw * max(c, k) * x.element_size()))
    for i in range(n):
        for r0 in range(0, th, rows):
            r1 = min(r0 + rows, th)
            t = (r1 - r0) * tw
            tiles = xp[i, 4 * r0 : 4 * r1 + 2].unfold(0, 6, 4).unfold(1, 6, 4)  # rows, tw, C, 6, 6
            v = (bt @ tiles.permute(3, 4, 0, 1, 2).reshape(36, t * c)).view(36, t, c)
            m = torch.bmm(v, u)  # 36, t, K
            del v
            y = (at @ m.view(36, t * k)).view(4, 4, r1 - r0, tw, k).permute(2, 0, 3, 1, 4)
            del m
            band = out[i, r0:r1]
            if bias is not None:
                torch.add(y, bias, out=band)
            else:
                band.copy_(y)
            del y
            if relu:
                band.clamp_(min=0)  # while the band is in cache
    out = out.view(n, 4 * th, 4 * tw, k).permute(0, 3, 1, 2)
    if (4 * th, 4 * tw) != (ho, wo):
        out = out[..., :ho, :wo].contiguous(memory_format=torch.channels_last)
    return out


def conv3x3(
    x: torch.Tensor,
    conv: torch.nn.Conv2d,
    pads: tuple[int, int, int, int] = (1, 1, 1, 1),
) -> torch.Tensor:
    """``relu(conv(F.pad(x, pads)))`` for a 3x3 stride-1 layer, Winograd where it pays.

    For inference only: the ReLU runs in place on the fresh result.
    """
    if use_winograd(x, conv.weight):
        return winograd_conv3x3(x, conv.weight, conv.bias, pads, relu=True)
    if pads[0] == pads[1] == pads[2] == pads[3]:
        return F.conv2d(x, conv.weight, conv.bias, padding=pads[0]).relu_()
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias).relu_()


#: conv_as_matmul unfolds at most about this many output positions at a time, so
#: the unfolded input stays small for big inputs and batches (fc6: 100 KB each).
_MATMUL_ROWS = 1024


def conv_as_matmul(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """An unpadded stride-1 convolution as ``patches @ weight.T``.

    The weight matrix is a view of ``conv.weight`` in whichever memory format
    it has (channels-last gives ``(kh, kw, C)`` columns, contiguous
    ``(C, kh, kw)``), and the patches are unfolded in the same order, so the
    weight is never copied.

    Returns:
        ``(N, K, Ho, Wo)`` in channels-last memory.
    """
    weight, bias = conv.weight, conv.bias
    if conv.padding != (0, 0) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f"conv_as_matmul: {conv} is not an unpadded stride-1 convolution")
    k, c, kh, kw = weight.shape
    n, _, h, w = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv_as_matmul: a {h}x{w} input is smaller than the {kh}x{kw} kernel")
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    if channels_last:
        wm = weight.permute(0, 2, 3, 1).reshape(k, kh * kw * c)
        patches = x.permute(0, 2, 3, 1).unfold(1, kh, 1).unfold(2, kw, 1).permute(0, 1, 2, 4, 5, 3)
    else:
        wm = weight.reshape(k, c * kh * kw)
        patches = x.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5)
    out = torch.empty((n, ho, wo, k), dtype=x.dtype, device=x.device)
    # Chunks of whole images when a map is small (so the 411 MB fc6 weight is
    # read once per chunk, not per image), of output rows when it is large.
    if ho * wo <= _MATMUL_ROWS:
        step = _MATMUL_ROWS // (ho * wo)
        chunks = [(slice(i, i + step),) for i in range(0, n, step)]
    else:
        step = max(1, _MATMUL_ROWS // wo)
        chunks = [(i, slice(r, r + step)) for i in range(n) for r in range(0, ho, step)]
    for idx in chunks:
        cols = patches[idx].reshape(-1, kh * kw * c)
        dst = out[idx].view(-1, k)
        if bias is not None:
            torch.addmm(bias, cols, wm.t(), out=dst)
        else:
            torch.mm(cols, wm.t(), out=dst)
    return out.permute(0, 3, 1, 2)
