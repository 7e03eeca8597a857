"""What differs between model families, in one place per family.

A weights entry (:class:`~face_segmentation_pytorch.pipeline.weights.Weights`)
names its family and its :class:`Preprocessing`; the family knows how to build
the network from a state_dict, check a state_dict, and turn the network's
output into a face probability. The pipeline (``FaceSegmenter``, the CLI, the
ONNX backend) calls these and has no ``if family == ...`` of its own.

- :data:`FCN8S`: the Caffe-exact FCN-8s of Nirkin et al.; scores -> softmax of
  background against the best (or a chosen) face channel; any input size.
- :data:`LINKNET34`: LinkNet34 of the OneFlow face segmentation work; one logit
  -> sigmoid; sides must be multiples of 32 (padded at native size).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import WeightsError
from ..segmentation.preprocess import Preprocessing

__all__ = [
    "Preprocessing",
    "IMAGENET_PREPROCESSING",
    "Family",
    "FCN8S",
    "LINKNET34",
    "FAMILIES",
    "family_of_state_dict",
    "family_of_model",
]


#: ImageNet statistics in 0..255 units, RGB, Pillow's bilinear resize to 256x256:
#: the LinkNet34 baseline's preprocessing (torchvision's transforms.Resize on a PIL
#: image), used by its published entry and by LinkNet34 objects given without one.
IMAGENET_PREPROCESSING = Preprocessing(
    input_size=256,
    channel_order="RGB",
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    resample="pil_bilinear",
)


class Family:
    """A model family: architecture, state_dict check, output -> probability.

    Subclasses set :attr:`name`, :attr:`size_multiple`, :attr:`onnx_output`
    and implement the methods.
    """

    name: str = ""
    #: Input sides must be multiples of this (1: any size).
    size_multiple: int = 1
    #: Name of the ONNX graph's output.
    onnx_output: str = "output"

    def owns_state_dict(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``state`` has this family's parameter names."""
        raise NotImplementedError

    def owns_model(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def check_state_dict(self, state: Mapping[str, torch.Tensor], source: str) -> dict:
        """Check ``state`` fits this family exactly; return its architecture
        (``num_classes`` and any width setting).

        Raises:
            WeightsError: naming ``source`` and the first tensor that does not fit.
        """
        raise NotImplementedError

    def build(self, state: Mapping[str, torch.Tensor], preprocessing: Preprocessing) -> nn.Module:
        """A network in eval mode holding ``state`` (already checked)."""
        raise NotImplementedError

    def build_trainable(self, state: Mapping[str, torch.Tensor], preprocessing: Preprocessing) -> nn.Module:
        """A network holding ``state`` in the form that trains (no inference-only
        rewrites such as folded BatchNorm); in eval mode like :meth:`build`."""
        return self.build(state, preprocessing)

    def check_face_channel(self, model: nn.Module, face_channel: int | None) -> None:
        """Raise ValueError when ``face_channel`` makes no sense for ``model``."""
        if face_channel is not None:
            raise ValueError(f"face_channel={face_channel}: {self.name} weights have one face logit; leave it unset")

    def logits_to_pmap(self, output: torch.Tensor, face_channel: int | None) -> torch.Tensor:
        """``(N, C, H, W)`` network output -> ``(N, H, W)`` face probability."""
        raise NotImplementedError

    def forward_pmap(self, model: nn.Module, batch: torch.Tensor, face_channel: int | None) -> torch.Tensor:
        """Run ``model`` on a prepared batch and return face probabilities."""
        return self.logits_to_pmap(model(batch), face_channel)

    def compile_mode(self, device: torch.device) -> str | None:
        """``torch.compile`` mode for this family on ``device`` (``None``: default)."""
        return None

    def prepare_for_device(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Choose the inference path for ``device``, in place: ``model`` is one
        the caller owns (built from weights or copied), still in its own dtype;
        it moves to ``device`` and the precision's dtype afterwards."""
        return model

    def to_channels_last(self, model: nn.Module) -> nn.Module:
        """The model in channels-last layout (measured fastest on CPU)."""
        return model.to(memory_format=torch.channels_last)

    def preprocessing_of(self, model: nn.Module) -> Preprocessing:
        """How to feed a model object given without a weights entry."""
        raise NotImplementedError


class _FCN8s(Family):
    name = "fcn8s"
    onnx_output = "score"

    def owns_state_dict(self, state) -> bool:
        return "conv1_1.weight" in state

    def owns_model(self, model) -> bool:
        from ..models.fcn8s import FaceSegmentationNet

        return isinstance(model, FaceSegmentationNet)

    def check_state_dict(self, state, source):
        from ..models.fcn8s import _expected_state_shapes, architecture_from_state_dict

        try:
            arch = architecture_from_state_dict(state)
        except (KeyError, ValueError, IndexError) as e:
            raise WeightsError(
                f"{source}: not weights of the FCN-8s face segmentation net ({e!s} missing or wrong)"
            ) from None
        _check_shapes(state, _expected_state_shapes(**arch), source, f"a {arch['num_classes']}-class net")
        return arch

    def build(self, state, preprocessing):
        from ..models.fcn8s import FaceSegmentationNet

        return FaceSegmentationNet.from_state_dict(
            state, input_size=preprocessing.input_size, mean_bgr=preprocessing.mean
        ).eval()

    def check_face_channel(self, model, face_channel):
        if face_channel is not None and not 1 <= face_channel < model.num_classes:
            raise ValueError(
                f"face_channel={face_channel} does not exist: the weights have "
                f"{model.num_classes} channels (use 1..{model.num_classes - 1}, or None)"
            )

    def to_channels_last(self, model):
        return model.channels_last_()  # leaves fc6 contiguous for its matrix product

    def compile_mode(self, device):
        # Measured on an H100 (README "GPU"): fp16 batch 32 at 0.89 ms/image with
        # max-autotune-no-cudagraphs, against 1.39 ms uncompiled.
        return "max-autotune-no-cudagraphs" if device.type == "cuda" else None

    def prepare_for_device(self, model, device):
        # The banded / Winograd / matrix-product fast path was built for CPUs
        # (benchmarks/bench.py: 2.8x OpenCV). On an H100 it loses to plain
        # cuDNN modules: 8.8 against 4.0 ms at batch 1, and 63.8 against 8.6 ms
        # per image at batch 32 with TF32 off (README "GPU"). So: dense on CUDA.
        model.fast_inference = device.type == "cpu"
        return model

    def preprocessing_of(self, model):
        return Preprocessing(input_size=model.input_size, channel_order="BGR", mean=tuple(model.mean_bgr))

    def logits_to_pmap(self, output, face_channel):
        from ..models.fcn8s import scores_to_pmap

        return scores_to_pmap(output, face_channel=face_channel)

    def forward_pmap(self, model, batch, face_channel):
        # The model's own as_pmap path (its fast CPU kernels apply there too).
        return model(batch, as_pmap=True, face_channel=face_channel)


class _LinkNet34(Family):
    name = "linknet34"
    size_multiple = 32
    onnx_output = "logits"

    def owns_state_dict(self, state) -> bool:
        return "firstconv.weight" in state

    def owns_model(self, model) -> bool:
        from ..models.linknet import LinkNet34

        return isinstance(model, LinkNet34)

    def check_state_dict(self, state, source):
        from ..models.linknet import expected_state_shapes

        if "finalconv3.weight" not in state or "firstconv.weight" not in state:
            raise WeightsError(f"{source}: not weights of LinkNet34 (firstconv / finalconv3 missing)")
        n = int(state["finalconv3.weight"].shape[0])
        _check_shapes(state, expected_state_shapes(n), source, f"a {n}-class LinkNet34")
        return {"num_classes": n}

    def build(self, state, preprocessing):
        from ..models.linknet import LinkNet34, fold_batchnorm

        # An inference model only (FaceSegmenter, export): BatchNorm is folded
        # into the convolutions at load (exact up to rounding, 48 fewer passes
        # over the maps on every device), and the fused CPU path is on. Training
        # builds its own LinkNet34 and keeps its BatchNorm.
        model = fold_batchnorm(LinkNet34.from_state_dict(state), inplace=True)
        model.fast_inference = True
        return model

    def build_trainable(self, state, preprocessing):
        from ..models.linknet import LinkNet34

        # Fine-tuning needs the BatchNorm layers the published weights have; a
        # folded network would train without them and save a state_dict that
        # no longer fits LinkNet34 (102 tensors instead of 306).
        return LinkNet34.from_state_dict(state).eval()

    def prepare_for_device(self, model, device):
        from ..models.linknet import fold_batchnorm

        # FaceSegmenter hands over a network it owns (built from weights, or
        # its copy of the caller's object): a model object still has its
        # BatchNorm and the fast path off, so fold it here, in float64 from the
        # weights' own dtype, before any cast to bfloat16. The fused path
        # checks device and dtype on every call itself.
        if not getattr(model, "fast_inference", False):
            model = fold_batchnorm(model, inplace=True)
            model.fast_inference = True
        return model

    def preprocessing_of(self, model):
        # The published entry's preprocessing (weights.py uses this object for it),
        # defined here so that the family needs nothing from the registry above it.
        return IMAGENET_PREPROCESSING

    def logits_to_pmap(self, output, face_channel):
        # A new tensor: with CUDA graphs (compile_mode) the logits' memory is
        # the graph's and is overwritten by the next call.
        return torch.sigmoid(output[:, 0])

    def compile_mode(self, device):
        # Measured on an H100 (GPU_NOTES, README "GPU"): at batch 1 the eager
        # forward is bound by its ~100 kernel launches (4.87 ms in float16);
        # CUDA graphs (reduce-overhead) replay them in 0.86 ms. The video
        # command runs at batch 1. The CPU: the default mode.
        return "reduce-overhead" if device.type == "cuda" else None


def _check_shapes(state, expected: dict, source: str, what: str) -> None:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: does not hold a state_dict (a mapping of names to tensors)")
    for key, shape in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: tensor {key!r} is missing (expected shape {shape})")
        got = tuple(state[key].shape)
        if got != shape:
            raise WeightsError(f"{source}: tensor {key!r} has shape {got}, expected {shape} for {what}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise WeightsError(f"{source}: unexpected tensors {', '.join(extra[:5])}")


FCN8S: Family = _FCN8s()
LINKNET34: Family = _LinkNet34()
FAMILIES: dict[str, Family] = {f.name: f for f in (FCN8S, LINKNET34)}


def family_of_state_dict(state: Mapping[str, torch.Tensor], source: str) -> Family:
    """The family whose parameter names ``state`` has.

    Raises:
        WeightsError: No family's names (naming ``source``).
    """
    if isinstance(state, Mapping):
        for fam in FAMILIES.values():
            if fam.owns_state_dict(state):
                return fam
    raise WeightsError(
        f"{source}: not weights of a known network (expected FCN-8s names such as conv1_1.weight "
        "or LinkNet34 names such as firstconv.weight)"
    )


def family_of_model(model: nn.Module) -> Family:
    """The family of a network object.

    Raises:
        TypeError: Neither a FaceSegmentationNet nor a LinkNet34.
    """
    for fam in FAMILIES.values():
        if fam.owns_model(model):
            return fam
    raise TypeError(f"expected a FaceSegmentationNet or a LinkNet34, got {type(model).__name__}")
