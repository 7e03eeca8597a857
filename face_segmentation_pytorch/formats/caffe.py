"""Read a binary caffemodel without Caffe or protobuf and turn it into a state_dict.

A caffemodel is a serialised ``NetParameter`` message. Only a handful of its
fields matter for weights, so this module reads the protobuf wire format
directly instead of depending on generated ``caffe_pb2`` code (which breaks
with new protobuf releases) or on the pure-Python protobuf backend (minutes for
the 540 MB model). Float arrays are taken from the memory-mapped file with
``numpy.frombuffer`` and copied once into their tensors.

Fields read (numbers from Caffe's ``caffe.proto``):

* ``NetParameter``: ``layer`` = 100 (``LayerParameter``), legacy ``layers`` = 2
  (``V1LayerParameter``).
* ``LayerParameter``: ``name`` = 1, ``type`` = 2, ``blobs`` = 7.
* ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (enum), ``blobs`` = 6.
* ``BlobProto``: ``num/channels/height/width`` = 1..4 (legacy shape),
  ``data`` = 5 (float), ``shape`` = 7 (``BlobShape.dim`` = 1, int64),
  ``double_data`` = 8.
"""

from __future__ import annotations

import mmap
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CaffeModelError
from ..models.fcn8s import FaceSegmentationNet, _expected_state_shapes

__all__ = [
    "CaffeLayer",
    "ConversionReport",
    "read_caffemodel",
    "caffe_layers_to_state_dict",
    "convert_caffemodel",
    "load_caffemodel_as_statedict",
]

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5

# Layers with lr_mult 0 in the deploy net: their values are known constants, so
# a file without them still converts (the report says so).
_FIXED_LAYERS = ("upscore2", "upscore_pool4", "upscore8", "scale_pool4", "scale_pool3")

# V1LayerParameter.LayerType values of the layers this net has; names only
# make reports readable, matching is by layer name.
_V1_TYPES = {4: "Convolution", 39: "Deconvolution", 18: "ReLU", 17: "Pooling", 6: "Dropout"}


@dataclass
class CaffeLayer:
    """One layer of a caffemodel: its name, type and weight blobs."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class ConversionReport:
    """What :func:`convert_caffemodel` did, for printing."""

    source: str
    layer_field: str = ""
    num_classes: int = 0
    channel_divisor: int = 1
    loaded: list[str] = field(default_factory=list)
    defaults_filled: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"read {self.source} ({self.layer_field} field): {len(self.loaded)} layers with "
            f"weights, {self.num_classes} classes, channel divisor {self.channel_divisor}"
        ]
        if self.reshaped:
            out.append("reshaped legacy blobs: " + ", ".join(self.reshaped))
        if self.defaults_filled:
            out.append("not in the file, filled with the fixed deploy values: " + ", ".join(self.defaults_filled))
        if self.ignored:
            out.append("ignored layers not in this network: " + ", ".join(self.ignored))
        return out


class _Reader:
    """Minimal protobuf wire-format reader over a buffer."""

    def __init__(self, buf, source: str) -> None:
        self.buf = buf
        self.source = source

    def fail(self, what: str, pos: int) -> CaffeModelError:
        return CaffeModelError(
            f"{self.source}: not a readable caffemodel ({what} at byte {pos}); "
            "the file is truncated, corrupt or of another format: download it again "
            "or check that it is the binary .caffemodel, not the .prototxt"
        )

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf = self.buf
        result = shift = 0
        while True:
            if pos >= end:
                raise self.fail("varint runs past the end of its message", pos)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise self.fail("varint longer than 10 bytes", pos)

    def fields(self, start: int, end: int):
        """Yield ``(field number, wire type, value or (start, end), next pos)``."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            num, wire = key >> 3, key & 7
            if num == 0:
                raise self.fail("field number 0", pos)
            if wire == _WIRE_VARINT:
                value, pos = self.varint(pos, end)
            elif wire == _WIRE_LEN:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise self.fail(f"field {num} claims {length} bytes but only {end - pos} remain", pos)
                value = (pos, pos + length)
                pos += length
            elif wire == _WIRE_I32:
                if pos + 4 > end:
                    raise self.fail("fixed32 runs past the end", pos)
                value = pos
                pos += 4
            elif wire == _WIRE_I64:
                if pos + 8 > end:
                    raise self.fail("fixed64 runs past the end", pos)
                value = pos
                pos += 8
            else:
                raise self.fail(f"unsupported wire type {wire} for field {num}", pos)
            yield num, wire, value, pos

    def string(self, span: tuple[int, int], pos: int) -> str:
        try:
            return bytes(self.buf[span[0] : span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a layer name that is not UTF-8", pos) from None

    def packed_varints(self, span: tuple[int, int]) -> list[int]:
        out, pos = [], span[0]
        while pos < span[1]:
            v, pos = self.varint(pos, span[1])
            out.append(v)
        return out

    def blob(self, start: int, end: int) -> np.ndarray:
        legacy = {}
        shape: list[int] | None = None
        chunks: list[np.ndarray] = []
        for num, wire, value, pos in self.fields(start, end):
            if num in (1, 2, 3, 4) and wire == _WIRE_VARINT:
                legacy[num] = value
            elif num == 5 and wire == _WIRE_LEN:  # packed float data
                s, e = value
                if (e - s) % 4:
                    raise self.fail("float data whose length is not a multiple of 4", s)
                chunks.append(np.frombuffer(self.buf, dtype="<f4", count=(e - s) // 4, offset=s))
            elif num == 5 and wire == _WIRE_I32:  # unpacked float, one tag per value
                chunks.append(np.frombuffer(self.buf, dtype="<f4", count=1, offset=value))
            elif num == 8 and wire == _WIRE_LEN:  # packed double data
                s, e = value
                if (e - s) % 8:
                    raise self.fail("double data whose length is not a multiple of 8", s)
                chunks.append(np.frombuffer(self.buf, dtype="<f8", count=(e - s) // 8, offset=s).astype(np.float32))
            elif num == 8 and wire == _WIRE_I64:
                chunks.append(np.frombuffer(self.buf, dtype="<f8", count=1, offset=value).astype(np.float32))
            elif num == 7 and wire == _WIRE_LEN:
                shape = []
                for n2, w2, v2, p2 in self.fields(*value):
                    if n2 == 1 and w2 == _WIRE_LEN:
                        shape.extend(self.packed_varints(v2))
                    elif n2 == 1 and w2 == _WIRE_VARINT:
                        shape.append(v2)
        if shape is None:
            # Legacy 4-d shape; proto2 defaults are 0 for unset dims.
            shape = [legacy.get(i, 0) for i in (1, 2, 3, 4)] if legacy else [0]
        if len(chunks) == 1:
            data = chunks[0].copy()
        else:
            data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        count = int(np.prod(shape)) if shape else 1
        if data.size != count:
            raise self.fail(
                f"a blob of shape {tuple(shape)} ({count} values) holding {data.size} values",
                start,
            )
        return data.reshape(shape)

    def layer(self, start: int, end: int, v1: bool) -> CaffeLayer:
        name_f, type_f, blobs_f = (4, 5, 6) if v1 else (1, 2, 7)
        name, ltype, blobs = "", "", []
        for num, wire, value, pos in self.fields(start, end):
            if num == name_f and wire == _WIRE_LEN:
                name = self.string(value, pos)
            elif num == type_f:
                if v1 and wire == _WIRE_VARINT:
                    ltype = _V1_TYPES.get(value, f"V1 type {value}")
                elif not v1 and wire == _WIRE_LEN:
                    ltype = self.string(value, pos)
            elif num == blobs_f and wire == _WIRE_LEN:
                blobs.append(self.blob(*value))
        return CaffeLayer(name, ltype, blobs)


def read_caffemodel(path: str | os.PathLike) -> tuple[list[CaffeLayer], str]:
    """Read every layer of a binary caffemodel.

    Args:
        path: The ``.caffemodel`` file.

    Returns:
        The layers in file order, and which field held them: ``"layer"``
        (current Caffe) or ``"layers"`` (legacy V1 files).

    Raises:
        CaffeModelError: The file is missing, empty, truncated or not a
            caffemodel.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CaffeModelError(f"{path}: cannot open caffemodel ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CaffeModelError(f"{path}: the caffemodel is empty; download it again")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            head = bytes(mm[:256])
            reader = _Reader(mm, path)
            layers: list[CaffeLayer] = []
            fields_seen = set()
            try:
                for num, wire, value, _ in reader.fields(0, size):
                    if num in (100, 2) and wire == _WIRE_LEN:
                        fields_seen.add("layer" if num == 100 else "layers")
                        layers.append(reader.layer(*value, v1=num == 2))
                if not any(layer.blobs for layer in layers):
                    raise CaffeModelError(f"{path}: no layer with weights found; is this a caffemodel of this network?")
            except CaffeModelError:
                # Only now look at what the file might be instead: a binary
                # caffemodel can start with printable bytes too.
                if _looks_like_prototxt(head):
                    raise CaffeModelError(
                        f"{path}: this is a text prototxt, not a binary caffemodel; "
                        "pass the .caffemodel file that holds the weights"
                    ) from None
                raise
            # Arrays are copies by now (see _Reader.blob), so the map can close.
    return layers, "+".join(sorted(fields_seen))


def _looks_like_prototxt(head: bytes) -> bool:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    return re.match(r"\s*(#|name\s*:|layers?\s*[{:]|input\s*:)", text) is not None


def _expected_shapes(num_classes: int, channel_divisor: int) -> OrderedDict[str, list]:
    """Map each Caffe layer name to its parameter names and shapes, in blob order."""
    layers: OrderedDict[str, list] = OrderedDict()
    for key, shape in _expected_state_shapes(num_classes, channel_divisor).items():
        layer, param = key.rsplit(".", 1)
        layers.setdefault(layer, []).append((param, shape))
    return layers


def caffe_layers_to_state_dict(
    layers: list[CaffeLayer], *, strict: bool = True, source: str = "caffemodel"
) -> tuple[OrderedDict[str, torch.Tensor], ConversionReport]:
    """Rename and reshape Caffe blobs into a :class:`FaceSegmentationNet` state_dict.

    A pure function of the layers: blob ``i`` of Caffe layer ``L`` becomes the
    ``i``-th parameter of module ``L`` (``weight`` then ``bias``). Blobs stored
    in another shape with the same number of values (legacy 4-d biases,
    ``InnerProduct``-style 2-d weights) are reshaped. The number of classes
    and the channel divisor are read from ``score_fr`` and ``conv1_1``.
    The fixed layers (the three deconvolutions and two Scale layers) get their
    deploy values when the file has no blobs for them.

    Args:
        layers: As returned by :func:`read_caffemodel`.
        strict: Refuse layers with weights that this network does not have.
        source: File name for error messages.

    Raises:
        CaffeModelError: naming the first layer or blob that does not fit.
    """
    report = ConversionReport(source=source)
    by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.blobs:
            if layer.name in by_name:
                raise CaffeModelError(f"{source}: layer {layer.name!r} appears twice with weights")
            by_name[layer.name] = layer
    for required in ("conv1_1", "score_fr"):
        if required not in by_name:
            raise CaffeModelError(
                f"{source}: no weights for layer {required!r}; this is not a caffemodel of the "
                f"FCN-8s face segmentation net (layers found: {', '.join(list(by_name)[:8])}...)"
            )
    c1 = by_name["conv1_1"].blobs[0].shape
    sf = by_name["score_fr"].blobs[0].shape
    conv1_out, num_classes = int(c1[0]), int(sf[0])
    if conv1_out < 1 or 64 % conv1_out or num_classes < 2:
        raise CaffeModelError(
            f"{source}: layer 'conv1_1' has {conv1_out} filters and 'score_fr' {num_classes}; "
            "expected 64 (or a divisor of 64) and at least 2"
        )
    report.num_classes, report.channel_divisor = num_classes, 64 // conv1_out
    expected = _expected_shapes(num_classes, report.channel_divisor)

    fixed_defaults = None
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, params in expected.items():
        layer = by_name.get(name)
        if layer is None:
            if name not in _FIXED_LAYERS:
                raise CaffeModelError(
                    f"{source}: no weights for layer {name!r}, which the network needs "
                    f"(expected {', '.join(str(s) for _, s in params)})"
                )
            if fixed_defaults is None:
                fixed_defaults = FaceSegmentationNet(num_classes, channel_divisor=report.channel_divisor).state_dict()
            state[f"{name}.weight"] = fixed_defaults[f"{name}.weight"].clone()
            report.defaults_filled.append(name)
            continue
        if len(layer.blobs) != len(params):
            raise CaffeModelError(
                f"{source}: layer {name!r} has {len(layer.blobs)} blobs, expected {len(params)} "
                f"({' and '.join(p for p, _ in params)})"
            )
        for (param, shape), blob in zip(params, layer.blobs):
            count = int(np.prod(shape))
            if blob.shape != shape:
                if blob.size != count:
                    raise CaffeModelError(
                        f"{source}: layer {name!r} {param} has shape {blob.shape}, "
                        f"expected {shape} for a {num_classes}-class net"
                    )
                report.reshaped.append(f"{name}.{param} {blob.shape}->{shape}")
                blob = blob.reshape(shape)
            state[f"{name}.{param}"] = torch.from_numpy(np.ascontiguousarray(blob, np.float32))
        report.loaded.append(name)
    extra = [n for n in by_name if n not in expected]
    if extra and strict:
        raise CaffeModelError(
            f"{source}: layers with weights that this network does not have: "
            f"{', '.join(extra)}; pass strict=False to ignore them"
        )
    report.ignored = extra
    return state, report


def convert_caffemodel(
    path: str | os.PathLike, *, strict: bool = True
) -> tuple[OrderedDict[str, torch.Tensor], ConversionReport]:
    """Read a caffemodel and return ``(state_dict, report)``."""
    layers, layer_field = read_caffemodel(path)
    state, report = caffe_layers_to_state_dict(layers, strict=strict, source=os.fspath(path))
    report.layer_field = layer_field
    return state, report


def load_caffemodel_as_statedict(path: str | os.PathLike, *, strict: bool = True) -> OrderedDict[str, torch.Tensor]:
    """Turn a caffemodel into a state_dict for :class:`FaceSegmentationNet`.

    The result loads with ``model.load_state_dict(sd, strict=True)`` into a
    model with the same number of classes (``FaceSegmentationNet(2)`` for the
    300x300 release), or use :meth:`FaceSegmentationNet.from_state_dict`.
    """
    return convert_caffemodel(path, strict=strict)[0]
