"""Shared fixtures: the reference prototxt, generated caffemodels, the OpenCV oracle."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

# A suite started as a background job of a script (``pytest &`` without job
# control, e.g. under nohup) inherits SIGINT ignored, and every command a test
# starts would inherit it too: the Ctrl-C tests would send a signal nobody hears
# (5 failures seen that way). Take it back for this process; commands started
# from here then begin with the default, as exec resets a handled signal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from caffe_writer import deploy_prototxt, random_layers, write_caffemodel  # noqa: E402

FIXTURES = TESTS / "fixtures"


@pytest.fixture(scope="session")
def reference_prototxt() -> str:
    """The authors' deploy definition, carried in the repository (fixtures/README.md)."""
    return (FIXTURES / "face_seg_fcn8s_deploy.prototxt").read_text()


class CaffeNet:
    """A generated caffemodel, its prototxt, and OpenCV's Caffe runtime on them."""

    def __init__(self, folder: Path, prototxt: str, layers, *, num_classes: int, channel_divisor: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.layers = layers
        self.num_classes = num_classes
        self.channel_divisor = channel_divisor
        self.prototxt = folder / "deploy.prototxt"
        self.prototxt.write_text(deploy_prototxt(prototxt, num_classes=num_classes, channel_divisor=channel_divisor))
        self.caffemodel = write_caffemodel(folder / "face_seg_fcn8s.caffemodel", layers)
        self._net = None

    def opencv_scores(self, x: np.ndarray) -> np.ndarray:
        import cv2

        if self._net is None:
            self._net = cv2.dnn.readNetFromCaffe(str(self.prototxt), str(self.caffemodel))
        self._net.setInput(np.ascontiguousarray(x, dtype=np.float32))
        return self._net.forward("score").copy()


def make_caffe_net(tmp: Path, prototxt: str, *, num_classes=21, channel_divisor=16, seed=0, fixed="random"):
    layers = random_layers(num_classes, channel_divisor, seed=seed, fixed=fixed)
    return CaffeNet(tmp, prototxt, layers, num_classes=num_classes, channel_divisor=channel_divisor)


@pytest.fixture(scope="session")
def slim_net(tmp_path_factory, reference_prototxt) -> CaffeNet:
    """Slim (channels / 16) 21-class net with random weights everywhere."""
    return make_caffe_net(tmp_path_factory.mktemp("slim21"), reference_prototxt)


@pytest.fixture(scope="session")
def slim_weights_dir(tmp_path_factory) -> Path:
    """A MODEL_PARAMS_DIR holding a slim face_seg_fcn8s.pt (no reference needed).

    He-initialised random weights with the deploy's fixed layers, so heatmaps
    vary across the image instead of sitting at one value.
    """
    import torch

    from face_segmentation_pytorch.formats.caffe import CaffeLayer, caffe_layers_to_state_dict
    from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet, _face_margin
    from face_segmentation_pytorch.pipeline.preprocess import image_to_input

    layers = random_layers(21, 16, seed=0, fixed="deploy")
    state, _ = caffe_layers_to_state_dict([CaffeLayer(n, "", b) for n, b in layers.items()])
    # Calibrate the score layers on a smooth test image so the face margin has
    # a spread of a few logits around zero: heatmaps use the whole 0..1 range
    # and masks cover part of the image.
    model = FaceSegmentationNet.from_state_dict(state).eval()
    yy, xx = np.mgrid[0:500, 0:500]
    img = np.stack([xx * 0.5, yy * 0.5, 255 * np.exp(-((xx - 250) ** 2 + (yy - 250) ** 2) / 2e4)], -1)
    x = image_to_input(img.astype(np.uint8))[None]
    with torch.no_grad():
        margin = _face_margin(model(x), None)
        scale = 3.0 / float(margin.std() + 1e-6)
        for name in ("score_fr", "score_pool4", "score_pool3"):
            getattr(model, name).weight.mul_(scale)
            getattr(model, name).bias.mul_(scale)
        margin = _face_margin(model(x), None)
        model.score_fr.bias[0] += float(margin.median())
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "face_seg_fcn8s.pt")
    return folder


@pytest.fixture(scope="session")
def full_weights_dir(tmp_path_factory) -> Path:
    """A MODEL_PARAMS_DIR holding a full-size (134M parameter) random face_seg_fcn8s.pt."""
    import torch

    from face_segmentation_pytorch.models.fcn8s import FaceSegmentationNet

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("full_weights")
    torch.save(FaceSegmentationNet().state_dict(), folder / "face_seg_fcn8s.pt")
    return folder


@pytest.fixture
def kernel_calls(monkeypatch) -> dict[str, int]:
    """Counts the fast path's Winograd and matrix-product convolutions while a test runs."""
    from face_segmentation_pytorch.models import kernels

    calls = {"winograd": 0, "matmul": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(kernels, "winograd_conv3x3", counting("winograd", kernels.winograd_conv3x3))
    monkeypatch.setattr(kernels, "conv_as_matmul", counting("matmul", kernels.conv_as_matmul))
    return calls
