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
from collections.abc import Mapping

import torch
from torch import nn

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


@torch.no_grad()
def fold_batchnorm(model: LinkNet34) -> LinkNet34:
    """Return an inference copy with every BatchNorm folded into its convolution.

    Each ``BatchNorm(conv(x))`` with running statistics becomes one
    convolution with weight ``w * s`` and bias ``(b - mean) * s + beta``,
    ``s = gamma / sqrt(running_var + eps)`` (computed in float64, stored in the
    weights' dtype); the BatchNorm modules become ``nn.Identity``. The result
    computes the same as ``model.eval()`` up to float rounding, with 48 fewer
    passes over the feature maps. Its state_dict has no BatchNorm entries, so
    keep the original for saving and training.

    Args:
        model: A :class:`LinkNet34` (left unchanged).

    Returns:
        A folded copy in eval mode.
    """
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in _conv_bn_pairs(folded):
        conv = getattr(parent, conv_name) if not conv_name.isdigit() else parent[int(conv_name)]
        bn = getattr(parent, bn_name) if not bn_name.isdigit() else parent[int(bn_name)]
        w = conv.weight.double()
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        if isinstance(conv, nn.ConvTranspose2d):
            # (in, out / groups, kH, kW): output channels are dim 1 (groups == 1 here).
            w = w * scale.view(1, -1, 1, 1)
        else:
            w = w * scale.view(-1, 1, 1, 1)
        new_bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
        conv.weight.copy_(w.to(conv.weight.dtype))
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
        if bn_name.isdigit():
            parent[int(bn_name)] = nn.Identity()
        else:
            setattr(parent, bn_name, nn.Identity())
    return folded
