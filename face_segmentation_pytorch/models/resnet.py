"""A ResNet-34 encoder with torchvision's parameter names, and no torchvision.

The LinkNet34 encoder is torchvision's ``resnet34`` without its pooling head:
a 7x7 stride-2 stem, a 3x3 stride-2 max-pool and four stages of
:class:`BasicBlock` (3, 4, 6 and 3 blocks). This module builds it from plain
``torch.nn`` layers so that nothing is imported from torchvision and nothing
is ever downloaded, while every parameter and buffer carries torchvision's
name (``conv1.weight``, ``layer2.0.downsample.0.weight``,
``layer2.0.downsample.1.running_mean`` ...). An ImageNet ``resnet34``
state_dict therefore loads into :class:`ResNet34Encoder` after dropping
``fc.*``, and :func:`load_torchvision_resnet34` renames it onto LinkNet34's
``firstconv`` / ``firstbn`` / ``encoder1..4`` names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "RESNET34_LAYERS",
    "RESNET34_WIDTHS",
    "BasicBlock",
    "make_stage",
    "ResNet34Encoder",
    "torchvision_name_to_linknet",
    "load_torchvision_resnet34",
]

#: Number of :class:`BasicBlock` in each of the four stages of ResNet-34.
RESNET34_LAYERS: tuple[int, int, int, int] = (3, 4, 6, 3)
#: Output channels of the four stages.
RESNET34_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet-18/34 (torchvision's names).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` where the shortcut
    is the identity, or ``downsample`` (1x1 stride-``stride`` convolution
    without bias, then BatchNorm) when the shape changes.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` and of the shortcut.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, inplanes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage: ``blocks`` :class:`BasicBlock`, the first with ``stride``.

    Children are named ``0``, ``1``, ... as in torchvision's ``layerK``.
    """
    layers = [BasicBlock(inplanes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet34Encoder(nn.Module):
    """torchvision's ``resnet34`` minus ``avgpool`` and ``fc``, same names.

    :meth:`forward` returns the four stage outputs (strides 4, 8, 16, 32),
    which is what an encoder-decoder network needs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (blocks, planes) in enumerate(zip(RESNET34_LAYERS, RESNET34_WIDTHS), start=1):
            setattr(self, f"layer{i}", make_stage(inplanes, planes, blocks, 1 if i == 1 else 2))
            inplanes = planes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, H, W)`` -> ``[layer1, layer2, layer3, layer4]`` outputs."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


# torchvision prefix -> LinkNet34 prefix (the blocks below keep their names).
_TV_TO_LINKNET = {"conv1": "firstconv", "bn1": "firstbn"}
_TV_TO_LINKNET.update({f"layer{i}": f"encoder{i}" for i in range(1, 5)})


def torchvision_name_to_linknet(name: str) -> str | None:
    """Rename one torchvision ``resnet34`` state_dict key to LinkNet34's.

    A pure function: ``conv1.*`` -> ``firstconv.*``, ``bn1.*`` -> ``firstbn.*``,
    ``layerK.*`` -> ``encoderK.*`` (block and child names unchanged).

    Args:
        name: A key such as ``"layer2.0.downsample.1.running_var"``.

    Returns:
        The LinkNet34 key, or ``None`` for keys LinkNet34 has no place for
        (``fc.weight``, ``fc.bias``, anything unknown).
    """
    head, sep, rest = name.partition(".")
    target = _TV_TO_LINKNET.get(head)
    if target is None or not sep:
        return None
    return f"{target}.{rest}"


def load_torchvision_resnet34(
    state_dict: Mapping[str, torch.Tensor],
) -> OrderedDict[str, torch.Tensor]:
    """Rename a torchvision ``resnet34`` state_dict onto LinkNet34's encoder.

    A checkpoint filter in the style of timm's: keys are renamed by
    :func:`torchvision_name_to_linknet` and ``fc.*`` is dropped; tensors are
    not copied. Load the result with ``model.load_state_dict(sd, strict=False)``
    (the decoder stays as initialised), as LinkNet's ImageNet start does.

    Args:
        state_dict: ``torchvision.models.resnet34().state_dict()`` or the
            same keys from a file.

    Returns:
        The renamed entries, in the input order.

    Raises:
        ValueError: When a key is neither a ResNet-34 key nor ``fc.*`` (such as
            a ``module.`` prefix from ``DataParallel``: strip it first).
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        new = torchvision_name_to_linknet(key)
        if new is None:
            if key.startswith("fc."):
                continue
            raise ValueError(f"{key!r} is not a torchvision resnet34 key; strip any prefix such as 'module.' first")
        out[new] = value
    return out
