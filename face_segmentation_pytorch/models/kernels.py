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
* ``winograd_f2_conv3x3``: F(2x2, 3x3), 16 multiplications per 2x2 tile instead
  of 36, with the kernel transformed once (:func:`winograd_f2_weights`). Its
  transforms add and subtract only (no scaling), so its error stays at direct
  fp32 rounding (3e-7 to 7e-7 of a layer's largest output). For LinkNet34's
  encoder on one thread, whose maps (32x32 to 8x8 at 256x256) are too small for
  F(4x4)'s tiles (``benchmarks/cpu.py --layers``, see linknet.py for two threads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "WINOGRAD_F2_MIN_CHANNEL_PRODUCT",
    "WINOGRAD_MIN_CHANNEL_PRODUCT",
    "conv3x3",
    "conv_as_matmul",
    "use_winograd",
    "use_winograd_f2",
    "winograd_conv3x3",
    "winograd_f2_conv3x3",
    "winograd_f2_weights",
]

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


# --------------------------------------------------------------------------
# Winograd F(2x2, 3x3) with the kernel transformed once.

#: Stride-1 3x3 layers with at least this many (input x output) channel pairs
#: take F(2x2, 3x3) in LinkNet34's fp32 fast path on one thread. Measured at
#: batch 1 on one thread (``benchmarks/cpu.py --layers --threads 1``; see
#: docs/performance.md): 64x64 channels at 64x64 slower (the transforms cost
#: more than they save), 128 at 32x32 and more faster.
WINOGRAD_F2_MIN_CHANNEL_PRODUCT = 128 * 128

# Lavin & Gray (2016), F(2x2, 3x3) with interpolation points 0, +-1, inf: every
# entry of B and A is 0 or +-1, so the data transforms are exact sums.
_BT2 = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G2 = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_AT2 = ((1, 1, 1, 0), (0, 1, -1, -1))
#: Transformed input tiles of one chunk take at most about this many bytes (as
#: ``_WINOGRAD_BAND_BYTES``): whole batches of LinkNet34's maps fit at 256x256.
_F2_CHUNK_BYTES = 16 * 2**20
_F2_MATRICES: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _f2_transforms(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``B (16x16)`` for a flattened 4x4 input tile and ``A (4x16)`` back to a 2x2 output tile."""
    key = (device, dtype)
    if key not in _F2_MATRICES:

        def kron(rows):
            m = torch.tensor(rows, dtype=torch.float64)
            return torch.kron(m, m).to(device=device, dtype=dtype)

        _F2_MATRICES[key] = (kron(_BT2), kron(_AT2))
    return _F2_MATRICES[key]


def use_winograd_f2(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a stride-1, padding-1 3x3 layer pays in F(2x2, 3x3) (float32 on the CPU only)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and tuple(weight.shape[2:]) == (3, 3)
        and weight.shape[0] * weight.shape[1] >= WINOGRAD_F2_MIN_CHANNEL_PRODUCT
    )


def winograd_f2_weights(weight: torch.Tensor) -> torch.Tensor:
    """The kernel transform ``G w G^T`` of every filter, once: ``(16, C, K)`` in ``weight``'s dtype.

    Computed in float64, so the only rounding is the final cast.
    """
    k, c = weight.shape[:2]
    g = torch.kron(*(torch.tensor(_G2, dtype=torch.float64, device=weight.device),) * 2)  # 16 x 9
    w = weight.detach().double().permute(2, 3, 1, 0).reshape(9, c * k)  # taps x (C, K)
    return (g @ w).reshape(16, c, k).to(weight.dtype).contiguous()


def winograd_f2_conv3x3(
    x: torch.Tensor,
    u: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = True,
) -> torch.Tensor:
    """``relu(conv2d(x, w, bias, padding=1) + residual)`` by Winograd F(2x2, 3x3).

    Args:
        x: ``(N, C, H, W)``, any memory format (channels-last reads without a copy).
        u: :func:`winograd_f2_weights` of the ``(K, C, 3, 3)`` weight.
        bias: ``(K,)`` or ``None``.
        residual: ``(N, K, H, W)`` added before the ReLU (a ResNet block's
            shortcut), or ``None``.
        relu: Apply ``max(0, .)`` last.

    Returns:
        ``(N, K, H, W)`` in channels-last memory.
    """
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    bt, at = _f2_transforms(x.device, x.dtype)
    # Tiles of 4x4 at stride 2 over the input padded to 2*th+2 x 2*tw+2 (one
    # zero row and column more where a side is odd: they feed only cropped outputs).
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 2 * tw + 1 - w, 1, 2 * th + 1 - h))
    out = torch.empty((n, th, 2, tw, 2, k), dtype=x.dtype, device=x.device)
    # The shortcut as tiles of the output (a view for a channels-last residual):
    # added chunk by chunk while the chunk is in cache. Odd sides: added at the end.
    res6 = None
    if residual is not None and h % 2 == 0 and w % 2 == 0:
        res6 = residual.permute(0, 2, 3, 1).reshape(n, th, 2, tw, 2, k)
    # Chunks of whole images while they fit (one product for a whole small
    # batch), of tile rows within an image when one image is too large.
    rows = max(1, _F2_CHUNK_BYTES // (16 * tw * max(c, k) * x.element_size()))
    if rows >= th:
        step = rows // th
        chunks = [(slice(i, i + step), slice(0, th)) for i in range(0, n, step)]
    else:
        chunks = [(slice(i, i + 1), slice(r, min(r + rows, th))) for i in range(n) for r in range(0, th, rows)]
    for imgs, trows in chunks:
        tiles = xp[imgs, 2 * trows.start : 2 * trows.stop + 2].unfold(1, 4, 2).unfold(2, 4, 2)  # n', r, tw, C, 4, 4
        t = tiles.shape[0] * tiles.shape[1] * tw
        v = (bt @ tiles.permute(4, 5, 0, 1, 2, 3).reshape(16, t * c)).view(16, t, c)
        m = torch.bmm(v, u)  # 16, t, K
        del v
        y = (at @ m.view(16, t * k)).view(2, 2, tiles.shape[0], tiles.shape[1], tw, k).permute(2, 3, 0, 4, 1, 5)
        del m
        dst = out[imgs, trows]
        if res6 is not None:
            torch.add(y, res6[imgs, trows], out=dst)
        else:
            dst.copy_(y)
        if bias is not None:
            dst.add_(bias)
        if relu and (residual is None or res6 is not None):
            dst.clamp_(min=0)  # while the chunk is in cache
    out = out.view(n, 2 * th, 2 * tw, k).permute(0, 3, 1, 2)
    if (2 * th, 2 * tw) != (h, w):
        out = out[..., :h, :w].contiguous(memory_format=torch.channels_last)
    if residual is not None and res6 is None:
        out.add_(residual)
        if relu:
            out.clamp_(min=0)
    return out
