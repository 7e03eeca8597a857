"""LinkNet34 face segmentation (the PyTorch baseline and its OneFlow ports).

The network of JiaojiaoYe1994/face-segmentation (``models.py``) and of the
OneFlow versions in ``oneflow_vision_model/face_seg`` and
``Oneflow-Inc/models`` ``Vision/segmentation/FaceSeg``: a ResNet-34 encoder,
four LinkNet decoder blocks with additive skips and a transposed-convolution
head, giving one logit per pixel (face where ``logit > 0``).

Every module carries the baseline's attribute name, so its ``linknet.pth``
loads with ``strict=True`` and the OneFlow checkpoints convert by renaming
(:mod:`face_segmentation_pytorch.formats.oneflow`)::

    firstconv firstbn firstrelu firstmaxpool         ResNet-34 stem
    encoder1 .. encoder4                             torchvision layer1 .. layer4
    decoder4 .. decoder1                             conv1 norm1 deconv2 norm2 conv3 norm3
    finaldeconv1 finalrelu1 finalconv2 finalrelu2 finalconv3

Shapes at a 256x256 input: e1 64, e2 32, e3 16, e4 8; decoder outputs 16, 32,
64, 128; ``finaldeconv1`` 257, ``finalconv2`` 255, ``finalconv3`` 256. Height
and width must be multiples of 32, or the skip additions do not line up.
"""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .resnet import RESNET34_LAYERS, RESNET34_WIDTHS, make_stage

__all__ = [
    "LinkNet34",
    "DecoderBlock",
    "RGB_MEAN",
    "RGB_STD",
    "INPUT_SIZE",
    "check_input_size",
    "expected_state_shapes",
    "fold_batchnorm",
    "fast_inference_model",
    "fast_path_applies",
    "FAST_DTYPES",
]

#: ImageNet statistics the baseline normalises RGB images in ``[0, 1]`` with.
RGB_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
RGB_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Side the published weights were trained at (images resized to 256x256).
INPUT_SIZE = 256
#: Total stride of the encoder: input sides must be multiples of it.
STRIDE = 32

# (decoder, input channels, output channels), in the order forward runs them.
_DECODERS = (("decoder4", 512, 256), ("decoder3", 256, 128), ("decoder2", 128, 64), ("decoder1", 64, 64))


def check_input_size(height: int, width: int) -> None:
    """Refuse sizes the network cannot run at.

    Args:
        height: Input height in pixels.
        width: Input width in pixels.

    Raises:
        ValueError: When either side is not a positive multiple of 32.
    """
    if height < STRIDE or width < STRIDE or height % STRIDE or width % STRIDE:
        fit_h = max(STRIDE, round(height / STRIDE) * STRIDE)
        fit_w = max(STRIDE, round(width / STRIDE) * STRIDE)
        raise ValueError(
            f"LinkNet34 input is {height}x{width} (HxW); height and width must be multiples of "
            f"{STRIDE}: resize or pad the image to a multiple of {STRIDE}, e.g. {fit_h}x{fit_w}"
        )


class DecoderBlock(nn.Module):
    """LinkNet decoder block: 1x1 reduce, 4x4 stride-2 transposed conv, 1x1 expand.

    ``conv1`` (1x1, ``C -> C/4``, bias) - ``norm1`` - ReLU - ``deconv2``
    (ConvTranspose 4x4, stride 2, padding 1, ``C/4 -> C/4``, bias) - ``norm2`` -
    ReLU - ``conv3`` (1x1, ``C/4 -> N``, bias) - ``norm3`` - ReLU. Doubles the
    spatial size.

    Args:
        in_channels: ``C``.
        n_filters: ``N``, the output channels.
    """

    def __init__(self, in_channels: int, n_filters: int) -> None:
        super().__init__()
        mid = in_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid, 1)
        self.norm1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.deconv2 = nn.ConvTranspose2d(mid, mid, 4, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, n_filters, 1)
        self.norm3 = nn.BatchNorm2d(n_filters)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, n_filters, 2H, 2W)``."""
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.relu2(self.norm2(self.deconv2(x)))
        return self.relu3(self.norm3(self.conv3(x)))


class LinkNet34(nn.Module):
    """LinkNet with a ResNet-34 encoder, as in the face segmentation baseline.

    Construction builds randomly initialised layers and never downloads
    anything; load weights with ``load_state_dict`` (a baseline ``.pth`` or
    the output of :func:`~face_segmentation_pytorch.formats.oneflow.load_oneflow_checkpoint`),
    or :meth:`from_state_dict`. ImageNet encoder weights from torchvision fit
    after :func:`~face_segmentation_pytorch.models.resnet.load_torchvision_resnet34`.

    Args:
        num_classes: Output channels of ``finalconv3``; the published models
            have 1 (a face logit).

    Input: ``(N, 3, H, W)`` float RGB scaled to ``[0, 1]`` and normalised with
    :data:`RGB_MEAN` / :data:`RGB_STD`, ``H`` and ``W`` multiples of 32.
    Output: ``(N, num_classes, H, W)`` logits (no sigmoid).
    """

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        #: With autograd off, in eval mode, on the CPU in float32: run the
        #: exact fused fast path (:func:`fast_inference_model`): BatchNorm
        #: folded, ReLU and residual additions fused into oneDNN convolutions
        #: with pre-packed weights, and the full-resolution head computed in
        #: its space-to-depth form. Off by default: it keeps a packed copy of
        #: the weights, which pays only for repeated inference.
        self.fast_inference = False
        self.firstconv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.firstbn = nn.BatchNorm2d(64)
        self.firstrelu = nn.ReLU(inplace=True)
        self.firstmaxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (blocks, planes) in enumerate(zip(RESNET34_LAYERS, RESNET34_WIDTHS), start=1):
            setattr(self, f"encoder{i}", make_stage(inplanes, planes, blocks, 1 if i == 1 else 2))
            inplanes = planes
        for name, cin, cout in _DECODERS:
            setattr(self, name, DecoderBlock(cin, cout))
        self.finaldeconv1 = nn.ConvTranspose2d(64, 32, 3, stride=2)
        self.finalrelu1 = nn.ReLU(inplace=True)
        self.finalconv2 = nn.Conv2d(32, 32, 3)
        self.finalrelu2 = nn.ReLU(inplace=True)
        self.finalconv3 = nn.Conv2d(32, num_classes, 2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network.

        Args:
            x: ``(N, 3, H, W)`` normalised RGB; ``H`` and ``W`` multiples of 32.

        Returns:
            ``(N, num_classes, H, W)`` logits.

        Raises:
            ValueError: For another rank, channel count or size.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LinkNet34 expects an (N, 3, H, W) RGB batch, got shape {tuple(x.shape)}; "
                "add a batch axis with x.unsqueeze(0) or convert the image to RGB"
            )
        check_input_size(int(x.shape[2]), int(x.shape[3]))
        if getattr(self, "fast_inference", False) and fast_path_applies(self, x):
            return _fast_forward(self, x)
        if self._channels_last():
            # Weights in channels-last (model.to(memory_format=torch.channels_last)):
            # give oneDNN / cuDNN the matching input layout.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.firstmaxpool(self.firstrelu(self.firstbn(self.firstconv(x))))
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        out = self.finalrelu1(self.finaldeconv1(d1))
        out = self.finalrelu2(self.finalconv2(out))
        return self.finalconv3(out)

    def _channels_last(self) -> bool:
        w = self.encoder1[0].conv1.weight
        return not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> LinkNet34:
        """Build a model whose class count fits ``state_dict`` and load it strictly.

        The model is built on the meta device and adopts the given tensors
        (no random initialisation, no copy).

        Raises:
            KeyError: When ``finalconv3.weight`` is missing.
            RuntimeError: From ``load_state_dict`` when keys or shapes differ.
        """
        num_classes = int(state_dict["finalconv3.weight"].shape[0])
        with torch.device("meta"):
            model = cls(num_classes)
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model


@functools.lru_cache(maxsize=8)
def _expected_state_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = LinkNet34(num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def expected_state_shapes(num_classes: int = 1) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of :class:`LinkNet34` and its shape, in module order.

    Computed on the meta device (no memory, no initialisation). BatchNorm's
    ``num_batches_tracked`` has shape ``()``.
    """
    return dict(_expected_state_shapes(int(num_classes)))


def _conv_bn_pairs(model: LinkNet34):
    """Yield ``(parent, conv attribute, bn attribute)`` for every conv followed by BatchNorm."""
    yield model, "firstconv", "firstbn"
    for i in range(1, 5):
        for block in getattr(model, f"encoder{i}"):
            yield block, "conv1", "bn1"
            yield block, "conv2", "bn2"
            if block.downsample is not None:
                yield block.downsample, "0", "1"
    for name, _, _ in _DECODERS:
        dec = getattr(model, name)
        for conv, bn in (("conv1", "norm1"), ("deconv2", "norm2"), ("conv3", "norm3")):
            yield dec, conv, bn


def _fold_pair(conv: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``bn(conv(x))`` as one convolution (float64 arithmetic).

    ``bn`` may be ``None`` or ``nn.Identity`` (already folded): then the
    convolution's own weight and bias (zeros without one) come back. The
    results have the convolution weight's dtype and device and are new
    tensors, never views of the parameters.
    """
    w = conv.weight.detach()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(w.shape[1 if _transposed(conv) else 0], dtype=torch.float64, device=w.device)
    )
    if bn is None or isinstance(bn, nn.Identity):
        return w.clone(), bias.to(w.dtype)
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    if _transposed(conv):
        # (in, out / groups, kH, kW): output channels are dim 1 (groups == 1 here).
        wf = w.double() * scale.view(1, -1, 1, 1)
    else:
        wf = w.double() * scale.view(-1, 1, 1, 1)
    new_bias = (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    return wf.to(w.dtype), new_bias.to(w.dtype)


def _transposed(conv: nn.Module) -> bool:
    return isinstance(conv, nn.ConvTranspose2d)


def _child(parent: nn.Module, name: str) -> nn.Module:
    return parent[int(name)] if name.isdigit() else getattr(parent, name)


@torch.no_grad()
def fold_batchnorm(model: LinkNet34, *, inplace: bool = False) -> LinkNet34:
    """Return an inference model with every BatchNorm folded into its convolution.

    Each ``BatchNorm(conv(x))`` with running statistics becomes one
    convolution with weight ``w * s`` and bias ``(b - mean) * s + beta``,
    ``s = gamma / sqrt(running_var + eps)`` (computed in float64, stored in the
    weights' dtype); the BatchNorm modules become ``nn.Identity``. The result
    computes the same as ``model.eval()`` up to float rounding, with 48 fewer
    passes over the feature maps. Its state_dict has no BatchNorm entries, so
    keep the original for saving and training.

    Args:
        model: A :class:`LinkNet34`.
        inplace: Fold ``model`` itself (for a model only ever used for
            inference, such as the one :class:`~face_segmentation_pytorch.FaceSegmenter`
            builds from a weights file) instead of a deep copy.

    Returns:
        The folded model (a copy unless ``inplace``) in eval mode.
    """
    folded = (model if inplace else copy.deepcopy(model)).eval()
    for parent, conv_name, bn_name in _conv_bn_pairs(folded):
        conv, bn = _child(parent, conv_name), _child(parent, bn_name)
        if isinstance(bn, nn.Identity):
            continue  # folded before
        w, b = _fold_pair(conv, bn)
        # New tensors, not copies into the old ones: a model built on a
        # state_dict's tensors (from_state_dict) leaves that dict unchanged.
        conv.weight = nn.Parameter(w, requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(b, requires_grad=False)
        if bn_name.isdigit():
            parent[int(bn_name)] = nn.Identity()
        else:
            setattr(parent, bn_name, nn.Identity())
    return folded


# --------------------------------------------------------------------------
# The exact fused CPU inference path.
#
# Why (benchmarks/video.py, benchmarks/cpu.py, 2 cores): LinkNet34 at 256x256
# spends its time in many small layers. Run module by module it makes ~150
# passes over feature maps (BatchNorm, ReLU, additions, each a separate parallel
# region), oneDNN reorders every weight on every call, and PyTorch's transposed
# convolutions take a slow generic path (the head's 3x3 stride-2 one runs at
# 6 GFLOP/s). Here, with the same arithmetic up to float rounding:
#
# * BatchNorm is folded into each convolution (in float64, then the weights' dtype);
# * each convolution runs as one oneDNN primitive with its ReLU fused, and the
#   residual addition plus ReLU fused into every block's second convolution;
# * weights are reordered once into oneDNN's blocked layout and kept;
# * in float32 on one thread (worker processes, OMP_NUM_THREADS=1), the stride-1
#   3x3 layers of 128 channels and more (encoder2 to encoder4, 23 of the 36 3x3
#   layers) run as Winograd F(2x2, 3x3) with the kernels transformed once
#   (kernels.winograd_f2_conv3x3): 2.25x fewer multiplications, error at direct
#   fp32 rounding. benchmarks/cpu.py --layers: on one thread 1.07x-1.41x per
#   layer, the whole path 1.13x; on two threads 0.74x-1.03x per layer, the whole
#   path 0.82x-0.91x (its eight small operations per layer each wake the other
#   thread, where one oneDNN call scales nearly 2x), so with more threads every
#   layer stays on oneDNN. encoder1's 64-channel layers stay direct (Winograd
#   0.6x-0.7x there);
# * the decoders' 4x4 stride-2 transposed convolutions run as oneDNN
#   deconvolutions with the ReLU fused;
# * finaldeconv1 (3x3, stride 2) runs as four ordinary convolutions, one per
#   output phase (even/odd row and column) with only the taps that phase meets
#   (2x2, 2x1, 1x2, 1x1: the transposed convolution's own 9 taps per input
#   pixel), written interleaved into the 257x257 map; finalconv2 runs on it
#   directly; finalconv3 (32 -> 1 channel, which oneDNN runs at a few GFLOP/s)
#   is one matrix product to its four taps and four shifted additions.
#   The earlier space-to-depth head (three 2x2 convolutions over 4 x 32
#   channels, zero taps included) did 3.3 GFLOP for these 1.8.
#
# In bfloat16 (weights converted once, PRECISION=bf16 on CPUs with native
# bfloat16) the same path runs with every convolution on oneDNN in bfloat16
# (no Winograd: its transforms need float32) and the final sums in float32.
# The package's F(4x4, 3x3) kernel (kernels.winograd_conv3x3) does not pay on
# these maps: 8x8 to 64x64 are too few 4x4 tiles for its transforms.


def fast_inference_model(model: LinkNet34) -> LinkNet34:
    """A LinkNet34 that runs the exact fused CPU fast path, leaving ``model`` alone.

    The returned model has BatchNorm folded (:func:`fold_batchnorm`), weights
    in channels-last layout and ``fast_inference`` on: with autograd off,
    in eval mode, in float32 or bfloat16 on the CPU its forward takes the fused
    path; in every other case (training, autograd, autocast, another dtype or
    device, forward hooks) it runs module by module, folded.

    Args:
        model: A :class:`LinkNet34` with weights loaded (any BatchNorm state).

    Returns:
        A folded copy; ``model`` itself is never changed. A model that has no
        BatchNorm left (already folded) is copied too, so that switching the
        path on never changes an object the caller holds.
    """
    fast = fold_batchnorm(model).to(memory_format=torch.channels_last)
    fast.fast_inference = True
    return fast


@functools.lru_cache(maxsize=1)
def _fused_ops_available() -> bool:
    """Whether this torch has the oneDNN fused convolution operators the path uses."""
    try:
        ops = torch.ops.mkldnn
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_convolution_transpose_pointwise")
            and hasattr(ops, "_reorder_convolution_weight")
        )
    except (AttributeError, RuntimeError):
        return False


#: The dtypes the fused path runs in: float32 (exact) and bfloat16 (PRECISION=bf16).
FAST_DTYPES = (torch.float32, torch.bfloat16)


def fast_path_applies(model: LinkNet34, x: torch.Tensor) -> bool:
    """Whether :meth:`LinkNet34.forward` takes the fused path for ``x``.

    Only for inference on the CPU in float32 or bfloat16 (input and weights
    alike): autograd, training mode, autocast and forward hooks (feature taps)
    all need the module-by-module path.
    """
    w = model.firstconv.weight
    return (
        not model.training
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype in FAST_DTYPES
        and w.dtype == x.dtype
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # torch.compile traces the module path
        and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules() if m is not model)
        and _fused_ops_available()
    )


class _Conv(NamedTuple):
    """One oneDNN convolution of the fused path: weight (packed), bias, geometry."""

    weight: torch.Tensor
    bias: torch.Tensor
    padding: list[int]
    stride: list[int]


class _Wino(NamedTuple):
    """One stride-1 3x3 convolution as Winograd F(2x2, 3x3): transformed weight ``(16, C, K)``, bias."""

    u: torch.Tensor
    bias: torch.Tensor


def _sources(conv: nn.Module, bn: nn.Module | None) -> list[torch.Tensor]:
    ts = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    if bn is not None and not isinstance(bn, nn.Identity):
        ts += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return ts


def _winograd_pays(conv: nn.Module, w: torch.Tensor) -> bool:
    """Whether a layer runs as F(2x2, 3x3) in float32: stride 1, padding 1, 3x3, wide enough."""
    return (
        tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (1, 1)
        and tuple(w.shape[2:]) == (3, 3)
        and w.shape[0] * w.shape[1] >= kernels.WINOGRAD_F2_MIN_CHANNEL_PRODUCT
    )


def _pack(w: torch.Tensor, b: torch.Tensor, padding, stride, input_hw: tuple[int, int]) -> _Conv:
    """Reorder a weight once into oneDNN's blocked layout for ``input_hw``.

    The layout is chosen for that input size; other sizes and batches still
    compute correctly with it (oneDNN converts as needed).
    """
    w = w.contiguous(memory_format=torch.channels_last)
    packed = torch.ops.mkldnn._reorder_convolution_weight(
        w, list(padding), list(stride), [1, 1], 1, [1, w.shape[1], int(input_hw[0]), int(input_hw[1])]
    )
    return _Conv(packed, b.contiguous(), list(padding), list(stride))


#: finaldeconv1 (3x3, stride 2, no padding) as convolutions per output phase:
#: ``U[o] = b + sum_i x[i] w[o - 2i]``, so output rows ``2p`` take kernel rows 2
#: and 0 from input rows ``p - 1`` and ``p`` (a 2-tap convolution over the input
#: padded by one: 129 rows from 128), rows ``2p + 1`` kernel row 1 from row ``p``
#: (1 tap, no padding: 128 rows). Phase -> (kernel taps in correlation order, padding).
_HEAD_PHASE_TAPS = {0: ([2, 0], 1), 1: ([1], 0)}


class _FastPlan:
    """The packed weights of one model, and what they were made from.

    ``valid`` compares the source tensors' storage and version counters, so
    weights changed in place (an optimiser step, ``load_state_dict``) or
    moved (``.to``) are packed again instead of going stale.
    """

    def __init__(self, model: LinkNet34, input_hw: tuple[int, int]) -> None:
        h, w = input_hw
        #: Made for one thread: Winograd layers (see above); remade when that changes.
        self.single_thread = _single_thread()
        winograd = model.firstconv.weight.dtype == torch.float32 and self.single_thread

        def conv(c: nn.Module, bn: nn.Module | None, hw) -> _Conv | _Wino:
            wt, bias = _fold_pair(c, bn)
            if winograd and _winograd_pays(c, wt):
                return _Wino(kernels.winograd_f2_weights(wt), bias)
            return _pack(wt, bias, c.padding, c.stride, hw)

        self.stem = conv(model.firstconv, model.firstbn, (h, w))
        self.blocks: list[tuple[_Conv | _Wino, _Conv | _Wino, _Conv | None]] = []
        hw = (h // 4, w // 4)
        for i in range(1, 5):
            for block in getattr(model, f"encoder{i}"):
                out_hw = hw if block.stride == 1 else ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
                ds = None
                if block.downsample is not None:
                    ds = conv(block.downsample[0], block.downsample[1], hw)
                self.blocks.append((conv(block.conv1, block.bn1, hw), conv(block.conv2, block.bn2, out_hw), ds))
                hw = out_hw
        self.decoders = []
        for name, _, _ in _DECODERS:
            dec = getattr(model, name)
            dw, db = _fold_pair(dec.deconv2, dec.norm2)
            up = (hw[0] * 2, hw[1] * 2)
            self.decoders.append(
                (
                    conv(dec.conv1, dec.norm1, hw),
                    _Conv(dw.contiguous(memory_format=torch.channels_last), db, [1, 1], [2, 2]),
                    conv(dec.conv3, dec.norm3, up),
                )
            )
            hw = up
        self._plan_head(model, hw)
        self._sources = [(weakref.ref(t), t.data_ptr(), _version(t)) for t in _all_sources(model)]

    def _plan_head(self, model: LinkNet34, hw: tuple[int, int]) -> None:
        wd, bd = _fold_pair(model.finaldeconv1, None)  # (64, 32, 3, 3): (in, out, kh, kw)
        self.head_channels = int(wd.shape[1])
        self.head_phases = []
        for a in (0, 1):
            for b in (0, 1):
                (rows, pad_r), (cols, pad_c) = _HEAD_PHASE_TAPS[a], _HEAD_PHASE_TAPS[b]
                wp = wd[:, :, rows][:, :, :, cols].transpose(0, 1)  # (out, in, taps, taps)
                self.head_phases.append(((a, b), _pack(wp, bd, (pad_r, pad_c), (1, 1), hw)))
        w2, b2 = _fold_pair(model.finalconv2, None)
        self.head_conv2 = _pack(w2, b2, (0, 0), (1, 1), (2 * hw[0] + 1, 2 * hw[1] + 1))
        w3, b3 = _fold_pair(model.finalconv3, None)  # (K, 32, 2, 2)
        # finalconv3 as one product to its 4 taps: columns ordered (i, j, k).
        self.head_w3 = w3.permute(1, 2, 3, 0).reshape(w3.shape[1], -1).contiguous()
        self.head_b3 = b3.float()

    def valid(self, model: LinkNet34) -> bool:
        now = _all_sources(model)
        if len(now) != len(self._sources):
            return False
        return all(
            ref() is t and t.data_ptr() == ptr and _version(t) == ver for (ref, ptr, ver), t in zip(self._sources, now)
        )


def _version(t: torch.Tensor) -> int | None:
    """``t``'s in-place version counter; ``None`` for a tensor made under ``torch.inference_mode``,
    which has none (such weights can only change in place inside inference mode)."""
    return None if t.is_inference() else t._version


def _all_sources(model: LinkNet34) -> list[torch.Tensor]:
    """Every tensor the packed weights are computed from, in a fixed order."""
    pairs = [(_child(p, c), _child(p, b)) for p, c, b in _conv_bn_pairs(model)]
    pairs += [(c, None) for c in (model.finaldeconv1, model.finalconv2, model.finalconv3)]
    return [t for c, b in pairs for t in _sources(c, b)]


#: Packed weights per model, dropped with the model (never part of its state).
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()


def _single_thread() -> bool:
    """Whether torch runs its operators on one thread here (where Winograd pays)."""
    return torch.get_num_threads() == 1


def _plan(model: LinkNet34, x: torch.Tensor) -> _FastPlan:
    with _PLANS_LOCK:
        plan = _PLANS.get(model)
        if plan is None or not plan.valid(model) or plan.single_thread != _single_thread():
            plan = _PLANS[model] = _FastPlan(model, (int(x.shape[2]), int(x.shape[3])))
        return plan


def _conv(x: torch.Tensor, c: _Conv | _Wino, attr: str = "relu") -> torch.Tensor:
    if isinstance(c, _Wino):
        return kernels.winograd_f2_conv3x3(x, c.u, c.bias, relu=attr == "relu")
    return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, c.padding, c.stride, [1, 1], 1, attr, [], None)


def _conv_add_relu(x: torch.Tensor, other: torch.Tensor, c: _Conv | _Wino) -> torch.Tensor:
    # relu(conv(x) + other): the residual addition of a BasicBlock, fused.
    if isinstance(c, _Wino):
        return kernels.winograd_f2_conv3x3(x, c.u, c.bias, residual=other)
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, c.weight, c.bias, c.padding, c.stride, [1, 1], 1, "add", None, "relu", [], None
    )


def _head(plan: _FastPlan, d: torch.Tensor) -> torch.Tensor:
    """finaldeconv1 + ReLU, finalconv2 + ReLU, finalconv3 on decoder1's output ``d`` (see above)."""
    n, _, h, w = d.shape
    u = torch.empty((n, 2 * h + 1, 2 * w + 1, plan.head_channels), dtype=d.dtype)
    for (a, b), c in plan.head_phases:
        u[:, a::2, b::2] = _conv(d, c).permute(0, 2, 3, 1)
    y = _conv(u.permute(0, 3, 1, 2), plan.head_conv2)  # (n, 32, 2h - 1, 2w - 1), channels-last
    hy, wy = y.shape[2:]
    k = plan.head_b3.numel()
    # finalconv3 (2x2, padding 1): out[r, s] = b + sum_ij W_ij y[r + i - 1, s + j - 1],
    # the four tap products in one matrix product, summed in float32.
    t = torch.mm(y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]), plan.head_w3).float().view(n, hy, wy, 2, 2, k)
    out = plan.head_b3.expand(n, hy + 1, wy + 1, k).clone()
    out[:, 1:, 1:] += t[:, :, :, 0, 0]
    out[:, 1:, :wy] += t[:, :, :, 0, 1]
    out[:, :hy, 1:] += t[:, :, :, 1, 0]
    out[:, :hy, :wy] += t[:, :, :, 1, 1]
    return out.to(d.dtype).permute(0, 3, 1, 2).contiguous()


def _fast_forward(model: LinkNet34, x: torch.Tensor) -> torch.Tensor:
    """The fused forward (see the comment above :func:`fast_inference_model`)."""
    plan = _plan(model, x)
    x = x.contiguous(memory_format=torch.channels_last)
    x = F.max_pool2d(_conv(x, plan.stem), 3, 2, 1)
    feats = []
    blocks = iter(plan.blocks)
    for n in RESNET34_LAYERS:
        for _ in range(n):
            c1, c2, ds = next(blocks)
            identity = x if ds is None else _conv(x, ds, "none")
            x = _conv_add_relu(_conv(x, c1), identity, c2)
        feats.append(x)
    e1, e2, e3, e4 = feats
    d = e4
    for (c1, dc, c3), skip in zip(plan.decoders, (e3, e2, e1, None)):
        y = _conv(d, c1)
        y = torch.ops.mkldnn._convolution_transpose_pointwise(
            y, dc.weight, dc.bias, dc.padding, [0, 0], dc.stride, [1, 1], 1, "relu", [], None
        )
        y = _conv(y, c3)
        d = y.add_(skip) if skip is not None else y
    return _head(plan, d)
