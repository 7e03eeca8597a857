"""The caffemodel reader and converter: formats, legacy fields, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from caffe_writer import caffemodel_bytes, random_layers, write_caffemodel

from face_segmentation_pytorch import CaffeModelError, FaceSegmentationNet
from face_segmentation_pytorch.formats.caffe import (
    CaffeLayer,
    caffe_layers_to_state_dict,
    convert_caffemodel,
    load_caffemodel_as_statedict,
    read_caffemodel,
)


@pytest.fixture(scope="module")
def layers():
    return random_layers(21, 16, seed=11)


def _assert_matches(sd, layers, skip=()):
    for name, blobs in layers.items():
        if name in skip:
            continue
        params = ["weight", "bias"][: len(blobs)]
        for p, blob in zip(params, blobs):
            np.testing.assert_array_equal(sd[f"{name}.{p}"].numpy(), blob)


def test_current_format_round_trip(tmp_path, layers):
    path = write_caffemodel(tmp_path / "m.caffemodel", layers)
    read, field = read_caffemodel(path)
    assert field == "layer"
    assert [layer.name for layer in read] == list(layers)
    assert read[0].type == "Convolution"
    sd = load_caffemodel_as_statedict(path)
    _assert_matches(sd, layers)
    FaceSegmentationNet(21, channel_divisor=16).load_state_dict(sd, strict=True)


def test_legacy_v1_layers_field_fills_fixed_scale(tmp_path, layers):
    # V1LayerParameter has no Scale type, so the Scale layers are absent and
    # take their deploy constants.
    path = write_caffemodel(tmp_path / "v1.caffemodel", layers, v1=True)
    sd, report = convert_caffemodel(path)
    assert report.layer_field == "layers"
    assert set(report.defaults_filled) == {"scale_pool4", "scale_pool3"}
    _assert_matches(sd, layers, skip={"scale_pool4", "scale_pool3"})
    assert torch.all(sd["scale_pool4.weight"] == 0.01)
    assert torch.all(sd["scale_pool3.weight"] == 0.0001)


def test_legacy_blob_shapes_and_double_data(tmp_path, layers):
    path = write_caffemodel(tmp_path / "legacy.caffemodel", layers, legacy_shape=True, double=True)
    sd, report = convert_caffemodel(path)
    _assert_matches(sd, layers)
    assert any(r.startswith("conv1_1.bias (1, 1, 1, 4)") for r in report.reshaped)


def test_unpacked_float_data_is_read():
    # One tag per value (wire type 5) is legal protobuf even though Caffe packs.
    w = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    blob = b"".join(b"\x2d" + np.float32(v).tobytes() for v in w.ravel())
    blob += b"\x3a\x06\x0a\x04\x01\x01\x02\x03"  # shape {dim: [1,1,2,3]} packed
    layer = b"\x0a\x07conv1_1" + b"\x3a" + bytes([len(blob)]) + blob
    data = b"\xa2\x06" + bytes([len(layer)]) + layer  # field 100, wire type 2
    from face_segmentation_pytorch.formats.caffe import _Reader

    reader = _Reader(data, "mem")
    ((num, wire, span, _),) = list(reader.fields(0, len(data)))
    parsed = reader.layer(*span, v1=False)
    assert parsed.name == "conv1_1"
    np.testing.assert_array_equal(parsed.blobs[0], w)


def test_rename_is_a_pure_function(layers):
    sd, report = caffe_layers_to_state_dict([CaffeLayer(n, "Convolution", b) for n, b in layers.items()], source="mem")
    assert report.num_classes == 21 and report.channel_divisor == 16
    assert list(sd) == list(FaceSegmentationNet(21, channel_divisor=16).state_dict())


def test_missing_fixed_deconvolution_is_filled_and_reported(layers):
    kept = [CaffeLayer(n, "", b) for n, b in layers.items() if n != "upscore8"]
    sd, report = caffe_layers_to_state_dict(kept)
    assert report.defaults_filled == ["upscore8"]
    ref = FaceSegmentationNet(21, channel_divisor=16).state_dict()["upscore8.weight"]
    assert torch.equal(sd["upscore8.weight"], ref)


@pytest.mark.parametrize("drop", ["fc7", "score_pool3"])
def test_missing_learned_layer_is_an_error(layers, drop):
    kept = [CaffeLayer(n, "", b) for n, b in layers.items() if n != drop]
    with pytest.raises(CaffeModelError, match=f"no weights for layer '{drop}'"):
        caffe_layers_to_state_dict(kept, source="x.caffemodel")


def test_wrong_shape_names_layer_and_shapes(layers):
    bad = dict(layers)
    bad["conv3_2"] = [np.zeros((16, 16, 5, 5), np.float32), bad["conv3_2"][1]]
    with pytest.raises(CaffeModelError) as e:
        caffe_layers_to_state_dict([CaffeLayer(n, "", b) for n, b in bad.items()], source="x.caffemodel")
    msg = str(e.value)
    assert "x.caffemodel" in msg and "'conv3_2'" in msg and "(16, 16, 5, 5)" in msg and "(16, 16, 3, 3)" in msg


def test_extra_layers_refused_unless_not_strict(tmp_path, layers):
    path = write_caffemodel(
        tmp_path / "extra.caffemodel", layers, extra_layers={"fc8_imagenet": [np.ones((3, 3), np.float32)]}
    )
    with pytest.raises(CaffeModelError, match="fc8_imagenet.*strict=False"):
        load_caffemodel_as_statedict(path)
    sd, report = convert_caffemodel(path, strict=False)
    assert report.ignored == ["fc8_imagenet"]


def test_truncated_file_is_a_clear_error(tmp_path, layers):
    data = caffemodel_bytes(layers)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeModelError, match=r"cut\.caffemodel: not a readable caffemodel .*truncated"):
        read_caffemodel(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b'name: "face_seg"\nlayer {\n  name: "data"\n}\n', "text prototxt"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a readable caffemodel|no layer with weights"),
        (b"\x08\x01\x10\x02", "no layer with weights"),
    ],
    ids=["empty", "prototxt", "png", "other-protobuf"],
)
def test_foreign_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "foreign.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeModelError, match=match) as e:
        read_caffemodel(path)
    assert str(path) in str(e.value)


def test_binary_file_starting_with_printable_bytes_is_not_taken_for_text(tmp_path, layers):
    from caffe_writer import MESSAGES

    # Net name of length 35: the file starts with b"\n#", which looks like a comment.
    head = MESSAGES["NetParameter"](name="#" * 35).SerializeToString()
    assert head.startswith(b"\n#")
    path = tmp_path / "named.caffemodel"
    path.write_bytes(head + caffemodel_bytes(layers))
    sd = load_caffemodel_as_statedict(path)
    _assert_matches(sd, layers)


def test_missing_file(tmp_path):
    with pytest.raises(CaffeModelError, match="cannot open"):
        read_caffemodel(tmp_path / "nope.caffemodel")


def test_convert_command_writes_strict_loadable_outputs(tmp_path, layers):
    src = write_caffemodel(tmp_path / "m.caffemodel", layers)
    out = tmp_path / "out" / "face_seg_fcn8s.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch.convert", str(src), str(out), "--safetensors"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "23 layers with weights, 21 classes" in proc.stdout
    assert "wrote" in proc.stdout
    sd = torch.load(out, weights_only=True)
    FaceSegmentationNet(21, channel_divisor=16).load_state_dict(sd, strict=True)
    from safetensors.torch import load_file

    sd2 = load_file(str(out.with_suffix(".safetensors")))
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_convert_command_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "face_segmentation_pytorch.convert", str(bad), str(tmp_path / "o.pt")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3  # a weights file that cannot be read (errors.EXIT_STATUSES)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("o.pt*")) and not list(tmp_path.glob(".o.pt*"))
