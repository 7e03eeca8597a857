"""Scripts written for the earlier PyTorch port run on this package.

The earlier port offered ``face_segmentation_pytorch.model.FaceSegmentationNet``
and, in ``face_segmentation_pytorch.utils``, ``load_caffemodel_as_statedict``,
``load_model_parameters``, ``normalize_range`` and ``plt_debug``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from face_segmentation_pytorch import DownloadError, FaceSegmentationError, FaceSegmentationNet, WeightsError
from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict as our_loader
from face_segmentation_pytorch.pipeline.plot import PLOT_EXTRA, PlotDependencyError, blend_heatmap
from face_segmentation_pytorch.utils import (
    load_caffemodel_as_statedict,
    load_model_parameters,
    normalize_range,
    plt_debug,
)

# Uses only the earlier port's paths and names (its README example, its
# __main__'s import, its utils); it must run unchanged.
EARLIER_PORT_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import torch
    from PIL import Image

    import face_segmentation_pytorch as fsp
    from face_segmentation_pytorch import plt_debug
    from face_segmentation_pytorch.model import FaceSegmentationNet
    from face_segmentation_pytorch.utils import load_caffemodel_as_statedict, load_model_parameters, normalize_range

    MODEL_PARAMS_DIR, IMAGE_PATH, IMAGE_PATH_2, CAFFEMODEL, OUT_PNG = sys.argv[1:6]
    report = {}

    # The earlier port's README example.
    model = fsp.FaceSegmentationNet()
    fsp.load_model_parameters(model, MODEL_PARAMS_DIR)
    model.eval()
    img = Image.open(IMAGE_PATH).convert("RGB")
    with torch.no_grad():
        t = model.img_to_input(img, pre_normalize=True).unsqueeze(0)
        out = model(t, as_pmap=True)[0]
    report["pmap_shape"] = list(out.shape)
    report["pmap_in_01"] = bool(out.min() >= 0 and out.max() <= 1)
    report["conv1_1_sum"] = float(model.conv1_1.weight.double().sum())
    report["model_module_class"] = FaceSegmentationNet is fsp.FaceSegmentationNet
    report["utils_loader"] = load_model_parameters is fsp.utils.load_model_parameters

    sd = load_caffemodel_as_statedict(CAFFEMODEL)
    sd64 = fsp.utils.load_caffemodel_as_statedict(CAFFEMODEL, t_type=torch.DoubleTensor)
    report["caffe_keys"] = len(sd)
    report["caffe_dtypes"] = sorted({str(v.dtype) for v in sd.values()})
    report["caffe64_dtypes"] = sorted({str(v.dtype) for v in sd64.values()})

    report["norm_array"] = normalize_range(np.array([[1.0, 3.0], [5.0, 9.0]], dtype=np.float32)).tolist()
    nt = fsp.utils.normalize_range(torch.tensor([2.0, 4.0, 6.0]), out_range=(0, 1))
    report["norm_tensor"] = [type(nt).__name__, nt.tolist()]

    img2 = Image.open(IMAGE_PATH_2).convert("RGB")
    heat2 = np.linspace(0, 1, img2.width * img2.height, dtype=np.float32).reshape(img2.height, img2.width)
    fig, (mix_axes, mask_axes) = plt_debug([img, img2], [out.numpy(), heat2])
    fig.savefig(OUT_PNG, dpi=50)
    report["geometry"] = list(fig.axes[0].get_subplotspec().get_gridspec().get_geometry())
    report["cells"] = [
        [ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start]
        for ax in list(mix_axes) + list(mask_axes)
    ]
    report["image_shapes"] = [list(ax.get_images()[0].get_array().shape) for ax in list(mix_axes) + list(mask_axes)]
    print("REPORT " + json.dumps(report))
    """
)


def _run(code: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.slow
def test_earlier_port_script_runs_unchanged(tmp_path, full_weights_dir, slim_net):
    rng = np.random.default_rng(0)
    img1, img2 = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(img1)
    Image.fromarray(rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)).save(img2)
    out_png = tmp_path / "debug.png"

    proc = _run(EARLIER_PORT_SCRIPT, full_weights_dir, img1, img2, slim_net.caffemodel, out_png, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])

    assert report["pmap_shape"] == [40, 56]
    assert report["pmap_in_01"]
    saved = torch.load(full_weights_dir / "face_seg_fcn8s.pt", mmap=True, weights_only=True)
    assert report["conv1_1_sum"] == pytest.approx(float(saved["conv1_1.weight"].double().sum()), rel=1e-9)
    assert report["model_module_class"] and report["utils_loader"]

    assert report["caffe_keys"] == len(our_loader(slim_net.caffemodel))
    assert report["caffe_dtypes"] == ["torch.float32"]
    assert report["caffe64_dtypes"] == ["torch.float64"]

    assert report["norm_array"] == [[0.0, 63.75], [127.5, 255.0]]
    assert report["norm_tensor"] == ["Tensor", [0.0, 0.5, 1.0]]

    # Two rows, one column per image: blends on top, masks below, each at its image's size.
    assert report["geometry"] == [2, 2]
    assert report["cells"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert report["image_shapes"] == [[40, 56, 3], [30, 24, 3], [40, 56], [30, 24]]
    with Image.open(out_png) as png:
        assert png.format == "PNG" and png.width > 0 and png.height > 0


# --- normalize_range -------------------------------------------------------------


def test_normalize_range_stretches_arrays_and_keeps_dtype():
    out = normalize_range(np.array([2.0, 4.0, 6.0]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.0, 127.5, 255.0])
    np.testing.assert_array_equal(normalize_range(np.array([2.0, 4.0, 6.0]), out_range=(-1, 1)), [-1.0, 0.0, 1.0])
    # Integers: 255 / 120 = 2.125, so 30 -> 63.75, rounded to 64.
    u8 = normalize_range(np.array([0, 30, 120], dtype=np.uint8))
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, [0, 64, 255])


def test_normalize_range_constant_input_becomes_minimum():
    np.testing.assert_array_equal(normalize_range(np.full((2, 2), 7.0)), np.zeros((2, 2)))
    np.testing.assert_array_equal(normalize_range(np.full((2, 2), 7.0), out_range=(10, 20)), np.full((2, 2), 10.0))
    t = normalize_range(torch.full((3,), 7.0), out_range=(10, 20))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.full((3,), 10.0))


def test_normalize_range_computes_in_float_dtype():
    x = np.array([0.0, 1.0, 7.0])
    # In float16, 1 / 7 * 255 = 36.428... comes out as 36.40625.
    half = float(np.float16(1.0) / np.float16(7.0) * np.float16(255.0))
    assert half == 36.40625
    out = normalize_range(x, float_dtype=np.float16)
    assert out.dtype == np.float64 and out[1] == half
    assert normalize_range(x)[1] == pytest.approx(255 / 7, rel=1e-6)  # float32 default
    assert normalize_range(x, float_dtype=np.float64)[1] == 1.0 / 7.0 * 255.0
    # Tensors take numpy or torch float types.
    for fdt in (np.float16, torch.float16):
        t = normalize_range(torch.tensor(x), float_dtype=fdt)
        assert t.dtype == torch.float64 and float(t[1]) == half


def test_normalize_range_tensor_stays_tensor():
    t = normalize_range(torch.tensor([[2.0, 4.0], [6.0, 10.0]]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert torch.equal(t, torch.tensor([[0.0, 63.75], [127.5, 255.0]]))
    ti = normalize_range(torch.tensor([0, 30, 120], dtype=torch.int32))
    assert ti.dtype == torch.int32 and ti.tolist() == [0, 64, 255]


def test_normalize_range_rejects_bad_arguments():
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        normalize_range([1, 2, 3])
    with pytest.raises(ValueError, match="low < high"):
        normalize_range(np.array([1.0, 2.0]), out_range=(5, 5))
    with pytest.raises(TypeError, match="floating"):
        normalize_range(np.array([1.0, 2.0]), float_dtype=np.int32)


# --- plt_debug ---------------------------------------------------------------------


IMG = np.array([[[10, 200, 37], [0, 255, 128]], [[37, 37, 37], [255, 0, 64]], [[1, 2, 3], [90, 91, 92]]], np.uint8)
HEAT = np.array([[0.0, 0.25], [0.5, 1.0], [0.75, 0.125]], np.float32)


def _expected_blend(img, heat, color, alpha):
    a = heat.astype(np.float64)[..., None] * alpha
    return np.rint(img.astype(np.float64) * (1 - a) + np.asarray(color, np.float64) * a).astype(np.uint8)


@pytest.mark.parametrize(
    "color, rgb, alpha",
    [("red", (255, 0, 0), 0.5), ((0, 128, 255), (0, 128, 255), 0.75), ("#00ff00", (0, 255, 0), 1.0)],
)
def test_blend_follows_formula(color, rgb, alpha):
    got = blend_heatmap(IMG, HEAT, color, alpha)
    assert got.dtype == np.uint8 and got.shape == IMG.shape
    np.testing.assert_array_equal(got, _expected_blend(IMG, HEAT, rgb, alpha))
    # PIL images, channels-first tensors and tensor heatmaps give the same pixels.
    chw = torch.from_numpy(IMG).permute(2, 0, 1)
    np.testing.assert_array_equal(blend_heatmap(Image.fromarray(IMG), torch.from_numpy(HEAT), color, alpha), got)
    np.testing.assert_array_equal(blend_heatmap(chw, HEAT, color, alpha), got)


def test_plt_debug_rows_hold_blend_and_thresholded_mask(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    big_heat = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    fig, (mix_axes, mask_axes) = plt_debug(
        [Image.fromarray(IMG), big],
        [torch.from_numpy(HEAT), big_heat],
        mask_color="blue",
        color_alpha=0.25,
        heatmap_thresh=0.5,
    )
    assert len(mix_axes) == len(mask_axes) == 2
    np.testing.assert_array_equal(
        mix_axes[0].get_images()[0].get_array(), _expected_blend(IMG, HEAT, (0, 0, 255), 0.25)
    )
    np.testing.assert_array_equal(
        mix_axes[1].get_images()[0].get_array(), _expected_blend(big, big_heat, (0, 0, 255), 0.25)
    )
    np.testing.assert_array_equal(mask_axes[0].get_images()[0].get_array(), HEAT >= 0.5)
    np.testing.assert_array_equal(mask_axes[1].get_images()[0].get_array(), big_heat >= 0.5)
    fig.savefig(tmp_path / "one.png")  # a bare Figure saves without pyplot or a display

    fig1, (mix1, mask1) = plt_debug([IMG], [HEAT])  # a single image still gives indexable rows
    assert len(mix1) == len(mask1) == 1 and len(fig1.axes) == 2


def test_plt_debug_rejects_mismatches():
    with pytest.raises(ValueError, match="2 images but 1 heatmaps"):
        plt_debug([IMG, IMG], [HEAT])
    with pytest.raises(ValueError, match="image 0: heatmap .* differ in size"):
        plt_debug([IMG], [HEAT.T])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        plt_debug([IMG], [HEAT * 3])


def test_plt_debug_without_matplotlib_names_the_extra():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["matplotlib"] = None  # as if matplotlib were not installed
        import numpy as np
        import face_segmentation_pytorch as fsp
        from face_segmentation_pytorch.errors import FaceSegmentationError
        try:
            fsp.plt_debug([np.zeros((2, 2, 3), np.uint8)], [np.zeros((2, 2))])
        except ImportError as e:
            print("ERROR", isinstance(e, FaceSegmentationError), e)
        """
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERROR True ")
    assert PLOT_EXTRA in proc.stdout
    assert PLOT_EXTRA == 'pip install "face_segmentation_pytorch[plot]"'
    assert issubclass(PlotDependencyError, FaceSegmentationError) and issubclass(PlotDependencyError, ImportError)


# --- load_caffemodel_as_statedict and load_model_parameters ----------------------------


def test_t_type_picks_the_dtype(slim_net):
    sd32 = load_caffemodel_as_statedict(slim_net.caffemodel)
    sd64 = load_caffemodel_as_statedict(slim_net.caffemodel, t_type=torch.DoubleTensor)
    assert {v.dtype for v in sd32.values()} == {torch.float32}
    assert {v.dtype for v in sd64.values()} == {torch.float64}
    assert list(sd64) == list(sd32)
    assert all(torch.equal(sd64[k], sd32[k].double()) for k in sd32)
    assert {v.dtype for v in load_caffemodel_as_statedict(slim_net.caffemodel, torch.float16).values()} == {
        torch.float16
    }
    with pytest.raises(TypeError, match="floating"):
        load_caffemodel_as_statedict(slim_net.caffemodel, t_type=torch.LongTensor)
    FaceSegmentationNet(channel_divisor=16).double().load_state_dict(sd64, strict=True)


def _slim_state(seed=3):
    torch.manual_seed(seed)
    return FaceSegmentationNet(channel_divisor=16).state_dict()


def test_default_names_use_our_lookup(tmp_path):
    state = _slim_state(5)
    torch.save(state, tmp_path / "face_seg_fcn8s.pt")
    model = FaceSegmentationNet(channel_divisor=16)
    entry = load_model_parameters(model, tmp_path)  # the earlier port's call
    assert entry.name == "fcn8s_500"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_named_files_are_looked_for_and_verified(tmp_path, slim_net):
    state = _slim_state()
    torch.save(state, tmp_path / "my_weights.pth")
    model = FaceSegmentationNet(channel_divisor=16)
    entry = load_model_parameters(model, tmp_path, state_dict_name="my_weights.pth")
    assert entry.name == "fcn8s_500"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    # A caffemodel under another name and suffix, the earlier port's positional order.
    shutil.copy(slim_net.caffemodel, tmp_path / "net.bin")
    model = FaceSegmentationNet(channel_divisor=16)
    load_model_parameters(model, tmp_path, "absent.pt", "net.bin")
    expected = our_loader(slim_net.caffemodel)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())

    # Never silent: a file that is not weights of this net raises.
    torch.save({"x": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="bad.pt"):
        load_model_parameters(FaceSegmentationNet(channel_divisor=16), tmp_path, "bad.pt")


def test_statedict_online_is_the_download_url(tmp_path):
    buf = io.BytesIO()
    torch.save(_slim_state(4), buf)
    archive = tmp_path / "port.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("face_seg_fcn8s.pt", buf.getvalue())  # as the earlier port's release zip
    params = tmp_path / "params"
    model = FaceSegmentationNet(channel_divisor=16)
    entry = load_model_parameters(model, params, statedict_online=archive.as_uri(), progress=False)
    assert entry.name == "fcn8s_500_port"
    assert (params / "face_seg_fcn8s.pt").is_file()
    assert torch.equal(model.conv1_1.weight, _slim_state(4)["conv1_1.weight"])

    # A failed download raises (the earlier port printed it and went on untrained).
    with pytest.raises(DownloadError):
        load_model_parameters(
            FaceSegmentationNet(channel_divisor=16),
            tmp_path / "empty",
            statedict_online=(tmp_path / "missing.zip").as_uri(),
            progress=False,
        )
