"""Write caffemodels with known weights, without Caffe.

The messages are declared at import time with protobuf's descriptor API (field
numbers from Caffe's caffe.proto), so this writer shares no code with the
library's own wire-format reader: the two meet only through the file, and
OpenCV's Caffe importer reads the same file as a third party.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build_messages():
    fdp = descriptor_pb2.FileDescriptorProto(name="fsp_tests_caffe.proto", package="fsp_tests_caffe", syntax="proto2")

    def msg(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, num, ftype, label, type_name, packed in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if type_name:
                f.type_name = f".fsp_tests_caffe.{type_name}"
            if packed:
                f.options.packed = True

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    msg("BlobShape", [("dim", 1, _F.TYPE_INT64, rep, None, True)])
    msg(
        "BlobProto",
        [
            ("num", 1, _F.TYPE_INT32, opt, None, False),
            ("channels", 2, _F.TYPE_INT32, opt, None, False),
            ("height", 3, _F.TYPE_INT32, opt, None, False),
            ("width", 4, _F.TYPE_INT32, opt, None, False),
            ("data", 5, _F.TYPE_FLOAT, rep, None, True),
            ("shape", 7, _F.TYPE_MESSAGE, opt, "BlobShape", False),
            ("double_data", 8, _F.TYPE_DOUBLE, rep, None, True),
        ],
    )
    msg(
        "LayerParameter",
        [
            ("name", 1, _F.TYPE_STRING, opt, None, False),
            ("type", 2, _F.TYPE_STRING, opt, None, False),
            ("blobs", 7, _F.TYPE_MESSAGE, rep, "BlobProto", False),
        ],
    )
    msg(
        "V1LayerParameter",
        [
            ("name", 4, _F.TYPE_STRING, opt, None, False),
            ("type", 5, _F.TYPE_INT32, opt, None, False),
            ("blobs", 6, _F.TYPE_MESSAGE, rep, "BlobProto", False),
        ],
    )
    msg(
        "NetParameter",
        [
            ("name", 1, _F.TYPE_STRING, opt, None, False),
            ("layers", 2, _F.TYPE_MESSAGE, rep, "V1LayerParameter", False),
            ("layer", 100, _F.TYPE_MESSAGE, rep, "LayerParameter", False),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"fsp_tests_caffe.{name}"))
        for name in ("BlobProto", "LayerParameter", "V1LayerParameter", "NetParameter")
    }


MESSAGES = _build_messages()
_V1_TYPE = {"Convolution": 4, "Deconvolution": 39}


def layer_type(name: str) -> str:
    if name.startswith("upscore"):
        return "Deconvolution"
    if name.startswith("scale_"):
        return "Scale"
    return "Convolution"


def group_by_layer(state_dict) -> dict[str, list[np.ndarray]]:
    """``{"conv1_1.weight": w, "conv1_1.bias": b}`` -> ``{"conv1_1": [w, b]}``."""
    layers: dict[str, list[np.ndarray]] = {}
    for key, value in state_dict.items():
        layer, _ = key.rsplit(".", 1)
        arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        layers.setdefault(layer, []).append(np.asarray(arr, np.float32))
    return layers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packed_floats(arr: np.ndarray) -> bytes:
    """BlobProto field 5 (packed float) as wire bytes."""
    raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    return bytes([5 << 3 | 2]) + _varint(len(raw)) + raw


def caffemodel_bytes(
    layers: dict[str, list[np.ndarray]],
    *,
    v1: bool = False,
    legacy_shape: bool = False,
    double: bool = False,
    extra_layers: dict[str, list[np.ndarray]] | None = None,
) -> bytes:
    """Serialise ``{layer name: [blobs]}`` as a caffemodel.

    Args:
        v1: Use the legacy ``layers`` field (V1LayerParameter); V1 has no
            Scale type, so Scale layers are left out.
        legacy_shape: Store shapes as num/channels/height/width (right-aligned
            to 4 dims) instead of ``BlobShape``.
        double: Store values in ``double_data``.
        extra_layers: More layers, typed as Convolution.
    """
    net = MESSAGES["NetParameter"](name="face_seg_fcn8s")
    items = list(layers.items()) + list((extra_layers or {}).items())
    for name, blobs in items:
        ltype = layer_type(name) if name in layers else "Convolution"
        if v1:
            if ltype not in _V1_TYPE:
                continue
            layer = net.layers.add(name=name, type=_V1_TYPE[ltype])
        else:
            layer = net.layer.add(name=name, type=ltype)
        for arr in blobs:
            blob = layer.blobs.add()
            if legacy_shape:
                dims = [1] * (4 - arr.ndim) + list(arr.shape)
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(arr.shape)
            if double:
                blob.double_data.extend(arr.ravel().astype(np.float64).tolist())
            else:
                # Merging a serialised packed field is how protobuf itself
                # concatenates messages; it avoids a Python float per value,
                # which the full 134M-value net could not afford.
                blob.MergeFromString(_packed_floats(arr))
    return net.SerializeToString()


def write_caffemodel(path: Path, layers: dict[str, list[np.ndarray]], **kwargs) -> Path:
    path = Path(path)
    path.write_bytes(caffemodel_bytes(layers, **kwargs))
    return path


def random_layers(
    num_classes: int = 21,
    channel_divisor: int = 16,
    *,
    seed: int = 0,
    fixed: str = "random",
) -> dict[str, list[np.ndarray]]:
    """Random weights for every layer of the net, as Caffe blobs.

    Args:
        fixed: ``"random"`` gives the deconvolutions and Scale layers random
            values too, so a misaligned crop or a wrong upsampling shows in
            the scores (the deploy's 1e-4 scale would hide the pool3 branch);
            ``"deploy"`` uses the bilinear kernels and 0.01 / 0.0001.
    """
    import torch

    from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet

    torch.manual_seed(seed)
    model = FaceSegmentationNet(num_classes, channel_divisor=channel_divisor)
    rng = np.random.default_rng(seed)
    layers: dict[str, list[np.ndarray]] = {}
    for key, tensor in model.state_dict().items():
        layer, param = key.rsplit(".", 1)
        shape = tuple(tensor.shape)
        kind = layer_type(layer)
        if kind == "Convolution":
            fan_in = int(np.prod(shape[1:])) if param == "weight" else 1
            std = np.sqrt(2.0 / fan_in) if param == "weight" else 0.1
            arr = rng.normal(0.0, std, size=shape)
        elif fixed == "deploy":
            arr = tensor.numpy()
        elif kind == "Scale":
            arr = rng.uniform(0.5, 1.5, size=shape)
        else:
            arr = rng.normal(0.0, 1.0 / shape[-1], size=shape)
        layers.setdefault(layer, []).append(np.asarray(arr, np.float32))
    return layers


def deploy_prototxt(reference_text: str, *, num_classes: int = 21, channel_divisor: int = 1) -> str:
    """The reference deploy prototxt with its channel counts changed."""

    def repl(match: re.Match) -> str:
        n = int(match.group(1))
        n = num_classes if n == 21 else n // channel_divisor
        return f"num_output: {n}"

    return re.sub(r"num_output:\s*(\d+)", repl, reference_text)
