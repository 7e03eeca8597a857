"""The earlier PyTorch port's module path ``face_segmentation_pytorch.utils``.

It exists so that scripts written for that port keep running: the four names
it offered, with their signatures, map onto this package. The real code lives
elsewhere:

* :func:`load_caffemodel_as_statedict` -> :mod:`face_segmentation_pytorch.formats.caffe`
  (no Caffe or protobuf needed; ``t_type`` picks the tensors' dtype).
* :func:`load_model_parameters` -> :mod:`face_segmentation_pytorch.pipeline.weights`:
  it finds or downloads the weights and verifies them; unlike the earlier
  port it never continues with an untrained model (a failure raises
  :class:`~face_segmentation_pytorch.errors.WeightsError`).
* :func:`normalize_range`: stretches values to a range (the earlier port's
  version returned its input unchanged).
* :func:`plt_debug` -> :mod:`face_segmentation_pytorch.pipeline.plot`
  (needs matplotlib, the ``plot`` extra; imported only when called).

New code can import from ``face_segmentation_pytorch`` directly.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import CaffeModelError, WeightsError
from .formats.caffe import load_caffemodel_as_statedict as _load_caffemodel

# The earlier port's package offered ``fsp.model`` as an attribute; importing it
# here (utils is imported by the package) keeps that true.
from .model import FaceSegmentationNet
from .segmentation.plot import plt_debug
from .weights.registry import (
    DEFAULT_WEIGHTS,
    Weights,
    apply_state_dict,
    check_state_dict,
    default_params_dir,
    get_weights,
    load_state_dict_file,
)
from .weights.registry import load_model_parameters as _load_model_parameters

__all__ = ["load_caffemodel_as_statedict", "load_model_parameters", "normalize_range", "plt_debug"]

#: What the earlier port's ``statedict_online`` pointed to by default: a zip
#: with its converted state_dict (this package's ``fcn8s_500_port`` entry).
EARLIER_PORT_WEIGHTS = "fcn8s_500_port"


def _tensor_type(t_type) -> tuple[torch.dtype, torch.device | None]:
    """dtype and device of a legacy tensor type (``torch.FloatTensor``,
    ``torch.cuda.DoubleTensor``, ...) or a ``torch.dtype``."""
    if isinstance(t_type, torch.dtype):
        dtype, device = t_type, None
    elif isinstance(getattr(t_type, "dtype", None), torch.dtype):
        dtype = t_type.dtype
        device = torch.device("cuda") if getattr(t_type, "is_cuda", False) else None
    else:
        raise TypeError(f"t_type must be a tensor type such as torch.FloatTensor or a torch.dtype, got {t_type!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"t_type must be a floating point type (weights are real numbers), got {t_type!r}")
    return dtype, device


def load_caffemodel_as_statedict(
    caffemodel_path: str | os.PathLike,
    t_type=torch.FloatTensor,
    *,
    strict: bool = True,
) -> OrderedDict[str, torch.Tensor]:
    """Turn a caffemodel into a state_dict for :class:`FaceSegmentationNet`.

    The earlier port's signature; the file is read by this package's own
    reader (no Caffe, no protobuf).

    Args:
        caffemodel_path: Path of the ``.caffemodel``.
        t_type: Type of the returned tensors: a legacy tensor type
            (``torch.FloatTensor``, ``torch.DoubleTensor``,
            ``torch.HalfTensor``, ``torch.cuda.FloatTensor`` for tensors on
            the GPU) or a floating ``torch.dtype``.
        strict: Refuse files that do not fit the network (see
            :func:`face_segmentation_pytorch.formats.caffe.convert_caffemodel`).

    Returns:
        Ordered mapping of parameter names to tensors of ``t_type``; it loads
        with ``model.load_state_dict(sd, strict=True)`` into a model of the
        same shape (``FaceSegmentationNet.from_state_dict(sd)`` builds one).

    Raises:
        CaffeModelError: The file is missing, truncated or not of this network.
        TypeError: ``t_type`` is not a floating tensor type.
    """
    dtype, device = _tensor_type(t_type)
    state = _load_caffemodel(caffemodel_path, strict=strict)
    if dtype == torch.float32 and device is None:
        return state
    return OrderedDict((k, v.to(dtype=dtype, device=device)) for k, v in state.items())


def _load_named_file(path: Path, caffe: bool) -> dict[str, torch.Tensor]:
    """Load and check a weights file the user named (any suffix)."""
    if caffe and path.suffix.lower() != ".caffemodel":
        # load_state_dict_file picks the reader by suffix; a caffemodel under
        # another name is read as one here.
        try:
            state = _load_caffemodel(path)
        except CaffeModelError as e:
            raise WeightsError(str(e)) from None
        check_state_dict(state, str(path))
        return dict(state)
    return load_state_dict_file(path)


def load_model_parameters(
    model: FaceSegmentationNet,
    params_dir: str | os.PathLike | None = None,
    state_dict_name: str = "face_seg_fcn8s.pt",
    caffemodel_name: str = "face_seg_fcn8s.caffemodel",
    statedict_online: str | None = None,
    *,
    weights: str | Weights | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Weights:
    """Load pretrained weights into ``model``: the earlier port's signature,
    this package's verified lookup.

    With the default names this is
    :func:`face_segmentation_pytorch.load_model_parameters`: it looks in
    ``params_dir`` for ``face_seg_fcn8s.pt``, ``.safetensors`` and
    ``.caffemodel`` and downloads only when none is there. Every file is
    checked against the network's exact shapes and loaded strictly; any
    failure raises (the earlier port printed the error and went on with an
    untrained model).

    Args:
        model: The network to fill.
        params_dir: Folder with (or for) the weights; ``None`` uses
            :func:`~face_segmentation_pytorch.pipeline.weights.default_params_dir`.
        state_dict_name: File name of a ``torch.save`` state_dict in
            ``params_dir``. A name other than ``<stem>.pt`` is looked for
            first (``.safetensors`` names work too).
        caffemodel_name: File name of a caffemodel in ``params_dir``. A name
            other than ``<stem>.caffemodel`` is looked for after
            ``state_dict_name``. When neither named file exists, the usual
            lookup and download run (they use this package's names).
        statedict_online: URL of a zip holding a state_dict ``.pt`` (the
            earlier port's parameter; its default was the port's release,
            this package's ``fcn8s_500_port`` entry). Given, it is the
            download ``url`` and the weights entry defaults to
            ``fcn8s_500_port``. ``None``: this package's default weights
            (the authors' caffemodel release).
        weights: Name of a :data:`~face_segmentation_pytorch.WEIGHTS` entry.
        url: Download from here (same as ``statedict_online``; give one).
        sha256: Expected sha256 of the downloaded archive.
        progress: Show a download progress bar on stderr.

    Returns:
        The :class:`~face_segmentation_pytorch.Weights` entry that describes
        what was loaded (the earlier port returned ``None``).

    Raises:
        WeightsError: A file is unreadable or does not fit the network, or the
            download failed (:class:`~face_segmentation_pytorch.errors.DownloadError`).
        ValueError: ``statedict_online`` and ``url`` disagree.
    """
    if statedict_online is not None and url is not None and statedict_online != url:
        raise ValueError(f"statedict_online={statedict_online!r} and url={url!r} disagree; give one")
    online = url if url is not None else statedict_online
    if weights is None:
        weights = EARLIER_PORT_WEIGHTS if statedict_online is not None else DEFAULT_WEIGHTS
    entry = get_weights(weights)
    if online is not None and online == entry.url:
        online = None  # the entry's own URL: keep its recorded sha256
    folder = Path(params_dir).expanduser() if params_dir is not None else default_params_dir()

    ours = {p.name for p in entry.local_candidates(folder)}
    for name, caffe in ((state_dict_name, False), (caffemodel_name, True)):
        if not name or name in ours:
            continue
        path = folder / name
        if path.is_file():
            return apply_state_dict(model, _load_named_file(path, caffe), path, weights)
    return _load_model_parameters(model, folder, weights=weights, url=online, sha256=sha256, progress=progress)


def _torch_dtype(float_dtype) -> torch.dtype:
    if isinstance(float_dtype, torch.dtype):
        return float_dtype
    return torch.from_numpy(np.empty(0, dtype=np.dtype(float_dtype))).dtype


def _numpy_dtype(float_dtype) -> np.dtype:
    if isinstance(float_dtype, torch.dtype):
        return torch.empty(0, dtype=float_dtype).numpy().dtype
    return np.dtype(float_dtype)


def normalize_range(x, float_dtype=np.float32, out_range: Sequence[float] = (0, 255)):
    """Stretch the values of ``x`` linearly so they span ``out_range``.

    The minimum of ``x`` maps to ``out_range[0]`` and its maximum to
    ``out_range[1]``; a constant ``x`` maps to ``out_range[0]`` everywhere.
    The arithmetic is done in ``float_dtype``:
    ``(x - min) / (max - min) * (high - low) + low``, so both ends are met exactly.

    Args:
        x: numpy array or torch tensor, any shape.
        float_dtype: Floating type the stretch is computed in (a numpy or a
            torch dtype, for arrays and tensors alike).
        out_range: ``(low, high)`` of the result, ``low < high``; both are
            reached.

    Returns:
        A new array (for an array) or tensor (for a tensor, on its device) of
        the same shape and dtype as ``x``, as the earlier port documented;
        integer dtypes are rounded to the nearest value and clipped to what
        they can hold.

    Raises:
        TypeError: ``x`` is neither an array nor a tensor, or ``float_dtype``
            is not floating.
        ValueError: ``out_range`` is not increasing.
    """
    low, high = (float(v) for v in out_range)
    if not low < high:
        raise ValueError(f"out_range must be (low, high) with low < high, got {tuple(out_range)}")
    if isinstance(x, torch.Tensor):
        fdt = _torch_dtype(float_dtype)
        if not fdt.is_floating_point:
            raise TypeError(f"float_dtype must be a floating type, got {float_dtype!r}")
        xf = x.detach().to(fdt)
        lo, hi = xf.min(), xf.max()
        if bool(hi > lo):
            xf = (xf - lo) / (hi - lo) * (high - low) + low
        else:
            xf = torch.full_like(xf, low)
        if x.dtype.is_floating_point:
            return xf.to(x.dtype)
        if x.dtype == torch.bool:
            return xf.round() != 0
        info = torch.iinfo(x.dtype)
        return xf.round().clamp(info.min, info.max).to(x.dtype)
    if isinstance(x, np.ndarray):
        fdt = _numpy_dtype(float_dtype)
        if not np.issubdtype(fdt, np.floating):
            raise TypeError(f"float_dtype must be a floating type, got {float_dtype!r}")
        xf = x.astype(fdt)
        lo, hi = xf.min(), xf.max()
        if hi > lo:
            xf = (xf - lo) / (hi - lo) * fdt.type(high - low) + fdt.type(low)
        else:
            xf = np.full_like(xf, low)
        if np.issubdtype(x.dtype, np.floating):
            return xf.astype(x.dtype)
        if x.dtype == bool:
            return np.rint(xf) != 0
        info = np.iinfo(x.dtype)
        return np.clip(np.rint(xf), info.min, info.max).astype(x.dtype)
    raise TypeError(f"normalize_range takes a numpy array or a torch tensor, got {type(x).__name__}")
