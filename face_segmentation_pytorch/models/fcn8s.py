"""FCN-8s (VGG-16) face segmentation network, equal to the authors' Caffe deploy net.

Every parametric module is named exactly like its Caffe layer (``conv1_1`` ...
``fc6``, ``score_fr``, ``upscore2``, ``scale_pool4`` ...), so converting a
caffemodel is a rename. Three details make the result equal to Caffe rather
than close to it:

* Caffe's pooling rounds the output size up; PyTorch rounds down unless
  ``ceil_mode=True``. With the 100 pixel pad of ``conv1_1`` the pooled maps
  have odd sizes, so rounding down shifts every later crop window.
* The crops (``score_pool4c``, ``score_pool3c``, ``score``) take fixed offsets
  and fail loudly when the window does not fit, as Caffe does.
* The three deconvolutions and the two Scale layers have ``lr_mult: 0`` in the
  deploy definition: they are fixed parameters (bilinear kernels, constants
  0.01 and 0.0001) that load from the caffemodel and are never trained.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

# Per-channel mean of the training images, in BGR order (from the authors' tool);
# re-exported here, its documented place.
from .constants import BGR_MEAN

__all__ = [
    "FaceSegmentationNet",
    "bilinear_upsampling_kernel",
    "scores_to_pmap",
    "scores_to_mask",
    "architecture_from_state_dict",
    "BGR_MEAN",
]

#: VGG-16 blocks: (block index, number of 3x3 convolutions, output channels).
_VGG_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64),
    (2, 2, 128),
    (3, 3, 256),
    (4, 3, 512),
    (5, 3, 512),
)
_FC_CHANNELS = 4096

#: Crop offsets of the deploy prototxt (crop_param.offset, axis 2).
_CROP_OFFSETS = {"score_pool4c": 5, "score_pool3c": 9, "score": 31}
#: Constants of the fixed Scale layers (scale_param.filler.value).
_SCALE_VALUES = {"scale_pool4": 0.01, "scale_pool3": 0.0001}
#: Fixed deconvolutions: (kernel size, stride).
_DECONVS = {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)}


def bilinear_upsampling_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Return the fixed weight of an FCN upsampling deconvolution.

    Channel ``i`` maps to channel ``i`` with a separable bilinear kernel and
    there is no cross-channel term, as in the FCN "surgery" that made the
    released caffemodels.

    Args:
        channels: Input and output channels of the deconvolution.
        kernel_size: Side of the square kernel.

    Returns:
        Tensor of shape ``(channels, channels, kernel_size, kernel_size)``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.arange(kernel_size, dtype=np.float64)
    filt1d = 1.0 - np.abs(og - center) / factor
    # Built in NumPy: under torch.device("meta") (from_state_dict) the torch
    # indexing ops would load meta kernels, a measured 0.2 s of start-up.
    weight = np.zeros((channels, channels, kernel_size, kernel_size), dtype=np.float32)
    idx = np.arange(channels)
    weight[idx, idx] = np.outer(filt1d, filt1d)
    return torch.from_numpy(weight)


class Scale(nn.Module):
    """Caffe ``Scale`` layer without bias: multiplies each channel by a constant."""

    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(value)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class Crop(nn.Module):
    """Caffe ``Crop`` layer on axes 2 and 3 with one offset for both.

    Unlike a clamp, a window that does not fit raises, as Caffe refuses it.
    """

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = int(offset)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        h, w = like.shape[-2:]
        o = self.offset
        if o + h > x.shape[-2] or o + w > x.shape[-1]:
            raise ValueError(f"Crop: a {h}x{w} window at offset {o} does not fit in a {x.shape[-2]}x{x.shape[-1]} map")
        return x[..., o : o + h, o : o + w]

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


class FaceSegmentationNet(nn.Module):
    """The Nirkin et al. (2018) FCN-8s face segmentation network.

    Args:
        num_classes: Output channels of the score layers: 21 for the released
            500x500 model, 2 for the 300x300 model. Channel 0 is background.
        channel_divisor: Divides every VGG and fc channel count. 1 is the
            published network; larger values give a slim copy of the same
            topology (the tests use 16).
        face_channel: Default rule for :meth:`forward` with ``as_pmap=True``.
            ``None`` means "face is the best non-background channel" (the
            authors' Python demo and their answer on the issue tracker);
            an integer ``c`` compares channel ``c`` with background only, as
            the authors' C++ tool does with ``c = 15``.
        input_size: Side the weights were trained at; used by
            :meth:`img_to_input` when ``resize=True``.
        mean_bgr: Mean subtracted from the BGR input.
    """

    def __init__(
        self,
        num_classes: int = 21,
        *,
        channel_divisor: int = 1,
        face_channel: int | None = None,
        input_size: int = 500,
        mean_bgr: Sequence[float] = BGR_MEAN,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if channel_divisor < 1 or 64 % channel_divisor:
            raise ValueError(f"channel_divisor must divide 64, got {channel_divisor}")
        self.num_classes = int(num_classes)
        self.channel_divisor = int(channel_divisor)
        self.face_channel = face_channel
        self.input_size = int(input_size)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        self._check_face_channel(face_channel)
        #: With autograd off, run the exact fast path: skip the convolution work
        #: the 100-pixel pad makes constant (banded.py) and, on CPU, Winograd
        #: 3x3 convolutions and fc6/fc7 as matrix products (kernels.py).
        #: False runs every layer as its own module, densely, as autograd,
        #: autocast and layers with forward hooks always do.
        self.fast_inference = True

        in_ch = 3
        for block, n_convs, out_ch in _VGG_BLOCKS:
            out_ch //= channel_divisor
            for i in range(1, n_convs + 1):
                pad = 100 if (block, i) == (1, 1) else 1
                setattr(self, f"conv{block}_{i}", nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                setattr(self, f"relu{block}_{i}", nn.ReLU(inplace=True))
                in_ch = out_ch
            setattr(self, f"pool{block}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        fc = _FC_CHANNELS // channel_divisor
        self.fc6 = nn.Conv2d(in_ch, fc, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.scale_pool4 = Scale(512 // channel_divisor, _SCALE_VALUES["scale_pool4"])
        self.scale_pool3 = Scale(256 // channel_divisor, _SCALE_VALUES["scale_pool3"])
        self._build_heads(num_classes)
        for name, offset in _CROP_OFFSETS.items():
            setattr(self, name, Crop(offset))

    def _build_heads(self, num_classes: int) -> None:
        # The layers whose shape depends on the number of classes.
        d = self.channel_divisor
        self.score_fr = nn.Conv2d(_FC_CHANNELS // d, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512 // d, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256 // d, num_classes, 1)
        for name, (k, s) in _DECONVS.items():
            deconv = nn.ConvTranspose2d(num_classes, num_classes, k, stride=s, bias=False)
            deconv.weight = nn.Parameter(bilinear_upsampling_kernel(num_classes, k), requires_grad=False)
            setattr(self, name, deconv)

    def set_num_classes(self, num_classes: int) -> None:
        """Rebuild the score layers for ``num_classes`` outputs (fresh weights).

        Used when loading weights with another number of classes, such as the
        2-class 300x300 release into a default 21-class model.
        """
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if self.face_channel is not None and self.face_channel >= num_classes:
            raise ValueError(
                f"the model's face_channel={self.face_channel} does not exist in a "
                f"{num_classes}-class model; set model.face_channel = None (or 1) first"
            )
        ref = self.conv1_1.weight
        self.num_classes = int(num_classes)
        self._build_heads(self.num_classes)
        for name in ("score_fr", "score_pool4", "score_pool3", *_DECONVS):
            getattr(self, name).to(device=ref.device, dtype=ref.dtype)

    def _check_face_channel(self, face_channel: int | None) -> None:
        if face_channel is not None and not 1 <= face_channel < self.num_classes:
            raise ValueError(
                f"face_channel must be between 1 and {self.num_classes - 1} for a "
                f"{self.num_classes}-class model, got {face_channel}; "
                "use None for the best non-background channel"
            )

    def forward(
        self,
        x: torch.Tensor,
        as_pmap: bool = False,
        face_channel: int | None | str = "default",
    ) -> torch.Tensor:
        """Run the network.

        Args:
            x: ``(N, 3, H, W)`` float tensor, BGR with the mean subtracted (see
                :meth:`img_to_input`). Any ``H, W >= 1``.
            as_pmap: Return the face probability map instead of raw scores.
            face_channel: Overrides the model's ``face_channel`` rule for this
                call (``None`` or an int); by default the model's rule is used.

        Returns:
            ``(N, num_classes, H, W)`` scores (Caffe's ``score`` blob), or with
            ``as_pmap=True`` an ``(N, H, W)`` face probability in ``[0, 1]``.
        """
        if self._channels_last():
            # Weights converted with model.to(memory_format=torch.channels_last):
            # feed oneDNN / cuDNN the matching layout (measured faster on CPU).
            x = x.contiguous(memory_format=torch.channels_last)
        data = x
        # The fast path computes layers without calling their modules, so it
        # steps aside for hooks (feature taps, pruning masks) and autocast.
        fast = (
            self.fast_inference
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type)
            and not self._layer_hooks()
        )
        if fast:
            # Same values to float rounding, much less work (banded.py, kernels.py).
            from .banded import vgg_trunk

            pool3, pool4, h = vgg_trunk(self, x)
        else:
            h = x
            pool3 = pool4 = None
            for block, n_convs, _ in _VGG_BLOCKS:
                for i in range(1, n_convs + 1):
                    h = getattr(self, f"relu{block}_{i}")(getattr(self, f"conv{block}_{i}")(h))
                h = getattr(self, f"pool{block}")(h)
                if block == 3:
                    pool3 = h
                elif block == 4:
                    pool4 = h
        if fast and h.device.type == "cpu":
            from .kernels import conv_as_matmul

            h = self.drop6(self.relu6(conv_as_matmul(h, self.fc6)))
            h = self.drop7(self.relu7(conv_as_matmul(h, self.fc7)))
        else:
            if self.fc6.weight.is_contiguous():
                # channels_last_() leaves fc6 contiguous; a channels-last input
                # would make oneDNN copy its 411 MB weight on every call.
                h = h.contiguous()
            h = self.drop6(self.relu6(self.fc6(h)))
            h = self.drop7(self.relu7(self.fc7(h)))
        score_fr = self.score_fr(h)

        upscore2 = self.upscore2(score_fr)
        score_pool4 = self.score_pool4(self.scale_pool4(pool4))
        fuse_pool4 = upscore2 + self.score_pool4c(score_pool4, upscore2)

        upscore_pool4 = self.upscore_pool4(fuse_pool4)
        score_pool3 = self.score_pool3(self.scale_pool3(pool3))
        fuse_pool3 = upscore_pool4 + self.score_pool3c(score_pool3, upscore_pool4)

        score = self.score(self.upscore8(fuse_pool3), data)
        if not as_pmap:
            return score
        rule = self.face_channel if face_channel == "default" else face_channel
        self._check_face_channel(rule)
        return scores_to_pmap(score, face_channel=rule)

    def channels_last_(self) -> FaceSegmentationNet:
        """Switch the convolution weights to channels-last in place, one at a time.

        Like ``model.to(memory_format=torch.channels_last)``, but only one
        parameter is ever held twice, and ``fc6`` keeps its layout: the fast
        path runs it as a matrix product that reads either layout, and oneDNN
        was measured faster on its contiguous form, so copying its 411 MB
        would only cost time and memory.
        """
        for module_name, module in self.named_modules():
            if module_name == "fc6":
                continue
            for p in module.parameters(recurse=False):
                if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        return self

    def _layer_hooks(self) -> bool:
        """Whether any layer has a forward hook or pre-hook."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules() if m is not self)

    def _channels_last(self) -> bool:
        w = self.conv1_2.weight
        return not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)

    def img_to_input(
        self,
        img,
        pre_normalize: bool = False,
        *,
        resize: bool | int | tuple[int, int] = False,
    ) -> torch.Tensor:
        """Turn an RGB image into the network's input, as the authors' tool does.

        RGB is flipped to BGR and the model's BGR mean is subtracted; nothing is
        divided. See :func:`face_segmentation_pytorch.preprocess.image_to_input`.

        Args:
            img: PIL image or ``(H, W, 3)`` uint8 RGB array.
            pre_normalize: Stretch the image's value range to 0..255 first.
                The original tool does not do this, so it changes results
                with respect to Caffe; it is off by default.
            resize: ``False`` runs at native size (as the seed did); ``True``
                resizes to the model's ``input_size`` with bicubic
                interpolation (the original tool's default); an int or
                ``(height, width)`` picks another size.

        Returns:
            ``(3, H, W)`` float32 tensor; add a batch axis with ``unsqueeze(0)``.
        """
        from ..segmentation.preprocess import image_to_input

        size = self.input_size if resize is True else (resize or None)
        return image_to_input(img, size=size, mean_bgr=self.mean_bgr, pre_normalize=pre_normalize)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **kwargs) -> FaceSegmentationNet:
        """Build a network whose shape fits ``state_dict`` and load it strictly.

        The number of classes and the channel divisor are read from the
        tensors; other keyword arguments go to the constructor. The model is
        built on the meta device and takes the given tensors as its parameters
        (no random initialisation, no copy), so it shares memory with
        ``state_dict``.
        """
        arch = architecture_from_state_dict(state_dict)
        with torch.device("meta"):
            model = cls(**arch, **kwargs)
        # assign=True adopts the tensors; requires_grad stays the module's, so
        # the fixed layers stay fixed.
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model


@functools.lru_cache(maxsize=8)
def _expected_state_shapes(num_classes: int, channel_divisor: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every state_dict entry, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = FaceSegmentationNet(num_classes, channel_divisor=channel_divisor)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def architecture_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Read ``num_classes`` and ``channel_divisor`` off a state_dict's shapes.

    Raises:
        KeyError: When ``conv1_1.weight`` or ``score_fr.weight`` is missing.
        ValueError: When ``conv1_1`` has a channel count no divisor of 64 gives.
    """
    conv1 = state_dict["conv1_1.weight"].shape[0]
    num_classes = state_dict["score_fr.weight"].shape[0]
    if conv1 < 1 or 64 % conv1:
        raise ValueError(f"conv1_1 has {conv1} output channels; expected a divisor of 64")
    return {"num_classes": int(num_classes), "channel_divisor": 64 // int(conv1)}


def scores_to_pmap(scores: torch.Tensor, face_channel: int | None = None) -> torch.Tensor:
    """Collapse raw scores to a face probability.

    The probability is the softmax over two logits, background (channel 0) and
    face, so it is ``sigmoid(face - background)``. It is above 0.5 exactly where
    the face logit beats background.

    Args:
        scores: ``(N, C, H, W)`` raw scores.
        face_channel: ``None`` takes the face logit as the maximum of channels
            ``1..C-1`` (so ``pmap > 0.5`` is "argmax is not background");
            an int takes that channel alone (the authors' C++ tool uses 15).

    Returns:
        ``(N, H, W)`` probabilities in ``[0, 1]``.
    """
    return torch.sigmoid(_face_margin(scores, face_channel))


def scores_to_mask(scores: torch.Tensor, threshold: float = 0.5, face_channel: int | None = None) -> torch.Tensor:
    """Threshold the face probability without rounding it first.

    Compares logits (``face - background > logit(threshold)``), so pixels whose
    probability rounds to exactly ``threshold`` in float32 are still decided
    as Caffe's argmax decides them.

    Returns:
        ``(N, H, W)`` boolean mask.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
    logit = float(np.log(threshold) - np.log1p(-threshold))
    return _face_margin(scores, face_channel) > logit


def _face_margin(scores: torch.Tensor, face_channel: int | None) -> torch.Tensor:
    if scores.dim() != 4 or scores.shape[1] < 2:
        raise ValueError(f"expected (N, C>=2, H, W) scores, got shape {tuple(scores.shape)}")
    if face_channel is None:
        face = scores[:, 1:].amax(dim=1)
    else:
        face = scores[:, face_channel]
    return face - scores[:, 0]
