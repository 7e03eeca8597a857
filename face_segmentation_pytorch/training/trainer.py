"""The training loop behind ``python -m face_segmentation_pytorch.train`` and :func:`train`.

The recipe of the LinkNet34 face segmentation work (reference notes): the
soft-Jaccard loss (optionally mixed with BCE), SGD with momentum 0.9 and
weight decay 5e-4, batch 4, horizontal flips and rotations up to 15 degrees.
Two bugs of the public versions are not reproduced, their intent is:

- the learning rate follows one cosine over the whole run, stepped per
  iteration (the public code restarted a period-2 cosine every 4 iterations);
- the training set is shuffled every epoch (the OneFlow loader shuffled an
  empty list, so it never shuffled).

Outputs in ``OUT_DIR``, each written to a temporary file and renamed:
``last.pt`` (everything needed to continue: model, optimizer, scheduler,
scaler, position in the epoch, history, RNG states), ``best.pt`` (a plain
state_dict of the epoch with the best validation mean IoU), ``metrics.jsonl``
(one line per epoch) and ``config.yaml``.

A seeded run on the CPU repeats exactly: the split, the shuffle and each
sample's augmentation come from generators seeded by ``SEED`` (and the epoch
and sample index), never from global state; the global torch generator (used
by dropout) is seeded and saved in ``last.pt``. So a run resumed from
``last.pt``, even one stopped mid-epoch by Ctrl-C, gives the same metrics as
one that was never stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, FaceSegmentationError, WeightsError
from ..keys import Key, is_int, is_number, merge_options
from .losses import SegmentationLoss, face_logit

if TYPE_CHECKING:
    from ..weights.registry import Weights
    from .data import TrainingData

__all__ = [
    "TRAIN_KEYS",
    "TRAIN_STRING_KEYS",
    "check_train_config",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "train",
    "build_model",
    "make_optimizer",
    "LRSchedule",
    "CHECKPOINT_FORMAT",
]

_AUTO = "auto"
#: Stored in ``last.pt`` so a foreign file is refused with a clear message.
CHECKPOINT_FORMAT = "face_segmentation_pytorch.train/1"

TRAIN_KEYS: dict[str, Key] = {
    "DATA_DIR": Key(
        None,
        "the training data (required): images/ + masks/ (split by VAL_FRACTION), train/ + val/ each "
        "holding images/ + masks/, or the seed's img_train.npy + mask_train.npy (+ img_test.npy / img_val.npy)",
    ),
    "OUT_DIR": Key(None, "where last.pt, best.pt, metrics.jsonl and config.yaml go (required)"),
    "WEIGHTS": Key(
        "linknet34_oneflow",
        "the weights entry whose network and preprocessing are trained: linknet34_oneflow (LinkNet34, RGB, "
        "ImageNet statistics, 256), fcn8s_300_no_aug (FCN-8s, 2 classes, 300), fcn8s_500 (21 classes, 500), ...",
    ),
    "INIT": Key(
        "scratch",
        "where the weights start: scratch; imagenet (LinkNet34 encoder from torchvision's resnet34 ImageNet "
        "file, downloaded from IMAGENET_URL when MODEL_PARAMS_DIR has none); pretrained (the entry's published "
        "weights, from MODEL_PARAMS_DIR or downloaded); or the path of a weights file or a run's last.pt / best.pt",
    ),
    "IMAGENET_WEIGHTS": Key(
        None,
        "INIT=imagenet: a copy of torchvision's resnet34 ImageNet state_dict (resnet34-b627a593.pth or "
        "resnet34-333f7ec4.pth); null: the resnet34-*.pth in MODEL_PARAMS_DIR, downloaded there if missing",
    ),
    "IMAGENET_URL": Key(
        "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "INIT=imagenet: where the resnet34 file is downloaded from (torchvision's); its name carries the start "
        "of its sha256, which is checked as torch.hub does; null: never download",
    ),
    "MODEL_PARAMS_DIR": Key(
        None,
        "folder of published weights (INIT=pretrained) and resnet34-*.pth (INIT=imagenet); null: the cache "
        "folder ($FACE_SEGMENTATION_PYTORCH_HOME, else ~/.cache/face_segmentation_pytorch)",
    ),
    "EPOCHS": Key(20, "passes over the training set (the PyTorch baseline: 20)"),
    "BATCH_SIZE": Key(4, "images per step (the recipe: 4); the last incomplete batch of an epoch is dropped"),
    "LR": Key(None, "learning rate; null: 0.01 for sgd (the baseline's first phase), 0.001 for adamw"),
    "OPTIMIZER": Key("sgd", "sgd (momentum 0.9, the recipe) or adamw"),
    "WEIGHT_DECAY": Key(5e-4, "weight decay (the recipe: 5e-4); decoupled for adamw"),
    "SCHEDULE": Key(
        "cosine",
        "cosine: one cosine from LR to 0 over the whole run, stepped per iteration; step: LR times LR_GAMMA "
        "at each epoch in LR_STEPS; constant",
    ),
    "LR_STEPS": Key(
        None, "SCHEDULE=step: epochs where the rate drops, e.g. [5,10]; null: a quarter and half of EPOCHS"
    ),
    "LR_GAMMA": Key(0.1, "SCHEDULE=step: factor applied at each step"),
    "JACCARD_WEIGHT": Key(
        1.0,
        "w in loss = (1-w) BCE - w log(soft Jaccard); 1 (pure soft Jaccard) in the PyTorch and OneFlow-eager "
        "versions, 0.5 in the old OneFlow one",
    ),
    "INPUT_SIZE": Key(
        _AUTO,
        "square side images are resized to; auto: the entry's (256 LinkNet34, 300 / 500 FCN-8s); LinkNet34: a multiple of 32",
    ),
    "VAL_FRACTION": Key(
        0.1, "share of the samples held out for validation when the data has no validation part; 0: none"
    ),
    "SEED": Key(0, "seeds the split, the shuffle, the augmentation and the initial weights"),
    "AUGMENT": Key(True, "horizontal flip (p=0.5) and rotation up to ROTATION degrees, image and mask alike"),
    "ROTATION": Key(15, "largest rotation in degrees (the recipe: 15)"),
    "COLOR_JITTER": Key(0, "brightness, contrast and saturation jitter strength in [0, 1) (true: 0.2); 0: off"),
    "CHANNEL_DIVISOR": Key(
        1, "FCN-8s with INIT=scratch: divide every channel count (a slim net for quick runs and tests)"
    ),
    "DEVICE": Key(None, "cpu, cuda or cuda:N; null: cuda when available, else cpu"),
    "AMP": Key(False, "CUDA only: mixed precision (float16 autocast with a gradient scaler)"),
    "CHANNELS_LAST": Key(
        True,
        "channels-last memory layout (training measured 2-3.5x faster on the CPU for LinkNet34 and slim FCN-8s; the usual choice on CUDA)",
    ),
    "WORKERS": Key(0, "DataLoader worker processes (0: load in the main process; results do not depend on it)"),
    "CHECK_DATA": Key("full", "full: decode every image and mask before training; header: read sizes only (faster)"),
    "RESUME": Key(
        False,
        "continue the run in OUT_DIR from its last.pt with its saved settings (RESUME=true OUT_DIR=run is "
        "enough); keys given again must match them, EPOCHS may grow",
    ),
    "OVERWRITE": Key(False, "start over in an OUT_DIR that holds an earlier run"),
    "STOP_AFTER": Key(
        None, "stop after this many epochs in this invocation (time-limited jobs); RESUME=true continues"
    ),
    "THREADS": Key(
        None,
        "torch CPU threads; null: torch's default (one per core). On a shared machine 1 can be several "
        "times faster; seeded CPU runs repeat exactly with the same number",
    ),
    "PROGRESS": Key(True, "progress on stderr: a bar on a terminal, a few lines in a log"),
}

TRAIN_STRING_KEYS = (
    "DATA_DIR",
    "OUT_DIR",
    "WEIGHTS",
    "INIT",
    "IMAGENET_WEIGHTS",
    "IMAGENET_URL",
    "MODEL_PARAMS_DIR",
    "DEVICE",
)

#: Keys holding a path (INIT: when it is not a keyword); a resumed run compares
#: them resolved, and the saved config holds them absolute so that the run can
#: be continued from any working folder.
PATH_KEYS = ("DATA_DIR", "OUT_DIR", "INIT", "IMAGENET_WEIGHTS", "MODEL_PARAMS_DIR")
_INIT_KEYWORDS = ("scratch", "imagenet", "pretrained")

#: Settings of one invocation, not of the run: a resumed run does not take
#: them from the saved config (STOP_AFTER=1 there would stop it again).
PER_INVOCATION = frozenset({"RESUME", "OVERWRITE", "STOP_AFTER", "PROGRESS"})

#: Settings that may differ when resuming (they do not change the curve, or,
#: for EPOCHS, change it knowingly). OUT_DIR is where the run is now (it may
#: have been moved); INIT and the ImageNet keys only decided the start, which
#: last.pt replaces.
RESUMABLE_CHANGES = frozenset(
    {
        "OUT_DIR",
        "IMAGENET_URL",
        "EPOCHS",
        "STOP_AFTER",
        "DEVICE",
        "WORKERS",
        "PROGRESS",
        "RESUME",
        "OVERWRITE",
        "CHECK_DATA",
        "MODEL_PARAMS_DIR",
        "IMAGENET_WEIGHTS",
        "INIT",
        "THREADS",
    }
)


class TrainingDiverged(FaceSegmentationError):
    """The loss became NaN or infinite."""


def check_train_config(cfg: Mapping[str, object], *, resuming: bool = False) -> dict:
    """Validate settings and fill in the values that depend on others.

    Resolves ``LR`` (by optimizer), ``INPUT_SIZE`` (by weights entry),
    ``LR_STEPS`` and ``COLOR_JITTER``; paths are expanded.

    Args:
        cfg: A value for every key of :data:`TRAIN_KEYS`.
        resuming: The settings of a run continued from its ``last.pt``: the
            files that only decided its start (``INIT``, ``IMAGENET_WEIGHTS``)
            need not exist any more.

    Raises:
        ConfigError: One line naming the key, its value and what is expected.
    """
    from ..weights.registry import get_weights

    cfg = dict(cfg)

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: {what}")

    for name in ("DATA_DIR", "OUT_DIR"):
        if cfg[name] is None:
            raise ConfigError(f"{name} is required; see --help")
        cfg[name] = str(Path(str(cfg[name])).expanduser())
    entry = get_weights(str(cfg["WEIGHTS"]))
    fam = entry.arch
    need(is_int(cfg["EPOCHS"]) and cfg["EPOCHS"] >= 1, "EPOCHS", "expected an integer >= 1")
    need(is_int(cfg["BATCH_SIZE"]) and cfg["BATCH_SIZE"] >= 1, "BATCH_SIZE", "expected an integer >= 1")
    need(cfg["OPTIMIZER"] in ("sgd", "adamw"), "OPTIMIZER", "expected sgd or adamw")
    if cfg["LR"] is None:
        cfg["LR"] = 0.01 if cfg["OPTIMIZER"] == "sgd" else 0.001
    need(is_number(cfg["LR"]) and cfg["LR"] > 0, "LR", "expected a number > 0")
    cfg["LR"] = float(cfg["LR"])
    need(is_number(cfg["WEIGHT_DECAY"]) and cfg["WEIGHT_DECAY"] >= 0, "WEIGHT_DECAY", "expected a number >= 0")
    cfg["WEIGHT_DECAY"] = float(cfg["WEIGHT_DECAY"])
    need(cfg["SCHEDULE"] in ("cosine", "step", "constant"), "SCHEDULE", "expected cosine, step or constant")
    if cfg["LR_STEPS"] is None:
        cfg["LR_STEPS"] = sorted({max(1, cfg["EPOCHS"] // 4), max(1, cfg["EPOCHS"] // 2)})
    steps = cfg["LR_STEPS"]
    need(
        isinstance(steps, (list, tuple)) and all(is_int(s) and s >= 1 for s in steps),
        "LR_STEPS",
        "expected a list of epochs >= 1, e.g. [5,10]",
    )
    cfg["LR_STEPS"] = sorted(int(s) for s in steps)
    need(is_number(cfg["LR_GAMMA"]) and 0 < cfg["LR_GAMMA"] <= 1, "LR_GAMMA", "expected a number in (0, 1]")
    need(
        is_number(cfg["JACCARD_WEIGHT"]) and 0 <= cfg["JACCARD_WEIGHT"] <= 1,
        "JACCARD_WEIGHT",
        "expected a number in [0, 1]",
    )
    cfg["JACCARD_WEIGHT"] = float(cfg["JACCARD_WEIGHT"])
    size = cfg["INPUT_SIZE"]
    if size == _AUTO:
        size = cfg["INPUT_SIZE"] = entry.input_size
    m = fam.size_multiple
    need(
        is_int(size) and size >= max(m, 1) and size % m == 0,
        "INPUT_SIZE",
        f"expected auto or an integer >= {max(m, 1)}" + (f" that is a multiple of {m} for {fam.name}" if m > 1 else ""),
    )
    vf = cfg["VAL_FRACTION"]
    need(is_number(vf) and 0 <= vf < 1, "VAL_FRACTION", "expected a number in [0, 1)")
    need(is_int(cfg["SEED"]) and cfg["SEED"] >= 0, "SEED", "expected an integer >= 0")
    for name in ("AUGMENT", "AMP", "CHANNELS_LAST", "RESUME", "OVERWRITE", "PROGRESS"):
        need(isinstance(cfg[name], bool), name, "expected true or false")
    need(is_number(cfg["ROTATION"]) and 0 <= cfg["ROTATION"] <= 180, "ROTATION", "expected degrees in [0, 180]")
    cj = cfg["COLOR_JITTER"]
    if isinstance(cj, bool):
        cfg["COLOR_JITTER"] = cj = 0.2 if cj else 0.0
    need(is_number(cj) and 0 <= cj < 1, "COLOR_JITTER", "expected a number in [0, 1), or true / false")
    cfg["COLOR_JITTER"] = float(cj)
    cd = cfg["CHANNEL_DIVISOR"]
    need(
        is_int(cd) and cd >= 1 and 64 % cd == 0, "CHANNEL_DIVISOR", "expected a divisor of 64 (1, 2, 4, 8, 16, 32, 64)"
    )
    if cd != 1 and fam.name != "fcn8s":
        raise ConfigError(f"CHANNEL_DIVISOR={cd}: only FCN-8s has a slim variant; {cfg['WEIGHTS']} is {fam.name}")
    need(is_int(cfg["WORKERS"]) and cfg["WORKERS"] >= 0, "WORKERS", "expected an integer >= 0")
    need(cfg["CHECK_DATA"] in ("full", "header"), "CHECK_DATA", "expected full or header")
    th = cfg["THREADS"]
    need(th is None or (is_int(th) and th >= 1), "THREADS", "expected null or an integer >= 1")
    sa = cfg["STOP_AFTER"]
    need(sa is None or (is_int(sa) and sa >= 1), "STOP_AFTER", "expected null or an integer >= 1")
    if cfg["RESUME"] and cfg["OVERWRITE"]:
        raise ConfigError("RESUME=true and OVERWRITE=true contradict each other; choose one")
    init = cfg["INIT"]
    need(isinstance(init, str) and init != "", "INIT", "expected scratch, imagenet, pretrained or a file path")
    if init not in _INIT_KEYWORDS:
        path = Path(init).expanduser()
        if not path.exists() and not resuming:
            raise ConfigError(
                f"INIT={init}: not scratch, imagenet or pretrained, and no such file; give one of those or a weights file"
            )
        cfg["INIT"] = str(path)
    if init == "imagenet" and fam.name != "linknet34":
        raise ConfigError(
            f"INIT=imagenet starts LinkNet34's ResNet-34 encoder; {cfg['WEIGHTS']} is {fam.name}: use "
            "INIT=pretrained (the published weights) or INIT=scratch"
        )
    if cd != 1 and init != "scratch":
        raise ConfigError(
            f"CHANNEL_DIVISOR={cd} builds a new slim net: it needs INIT=scratch (weights set their own width)"
        )
    for name in ("IMAGENET_WEIGHTS", "MODEL_PARAMS_DIR"):
        if cfg[name] is not None:
            cfg[name] = str(Path(str(cfg[name])).expanduser())
    if cfg["IMAGENET_WEIGHTS"] is not None and not Path(cfg["IMAGENET_WEIGHTS"]).is_file() and not resuming:
        raise ConfigError(f"IMAGENET_WEIGHTS={cfg['IMAGENET_WEIGHTS']}: no such file")
    _check_imagenet_url(cfg["IMAGENET_URL"])
    if cfg["AMP"] and str(cfg["DEVICE"] or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu"):
        raise ConfigError("AMP=true needs CUDA; training on the CPU runs in float32")
    return cfg


# --------------------------------------------------------------------------- ImageNet start

#: torch.hub's rule for weights files: the part of the name after the last
#: "-" is the start of the file's sha256 (at least 8 hex digits here).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def _url_file_name(url: str) -> str:
    """The file name at the end of a URL's path (``resnet34-b627a593.pth``)."""
    return PurePosixPath(urllib.parse.urlsplit(url).path).name


def _check_imagenet_url(url: object) -> None:
    """``IMAGENET_URL`` must be null or name a file whose name carries its hash prefix.

    Raises:
        ConfigError: Naming the key, the value and the rule.
    """
    if url is None:
        return
    if not isinstance(url, str) or not _HASH_IN_NAME.search(_url_file_name(url)):
        raise ConfigError(
            f"IMAGENET_URL={url!r} is invalid: expected null or a URL whose file name carries the first 8 or more "
            "hex digits of its sha256, as torchvision's do (resnet34-b627a593.pth)"
        )


def _imagenet_folder(cfg: Mapping) -> Path:
    """Where INIT=imagenet looks for (and downloads) the resnet34 file."""
    from ..weights.registry import default_params_dir

    return Path(cfg["MODEL_PARAMS_DIR"]) if cfg["MODEL_PARAMS_DIR"] else default_params_dir()


def _imagenet_weights(cfg: Mapping, progress: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """The encoder tensors for INIT=imagenet, renamed onto LinkNet34, and their file.

    ``IMAGENET_WEIGHTS`` if given; else the URL's file, or any other
    ``resnet34-*.pth``, in the weights folder; else the file downloaded there.

    Raises:
        WeightsError: The file cannot be found, downloaded, verified or read.
    """
    from ..errors import WeightsSettingError

    if cfg["IMAGENET_WEIGHTS"]:
        path = Path(cfg["IMAGENET_WEIGHTS"])
        return path, _imagenet_encoder_state(path, str(path))
    folder = _imagenet_folder(cfg)
    if folder.exists() and not folder.is_dir():
        raise WeightsSettingError(f"{folder}: is a file; MODEL_PARAMS_DIR must be a folder")
    url = cfg["IMAGENET_URL"]
    wanted = [folder / _url_file_name(url)] if url else []
    found = [p for p in wanted if p.is_file()] or (sorted(folder.glob("resnet34-*.pth")) if folder.is_dir() else [])
    if found:
        return found[0], _imagenet_encoder_state(found[0], str(found[0]))
    if not url:
        raise WeightsError(
            f"INIT=imagenet needs torchvision's ImageNet resnet34 weights, a state_dict file such as "
            f"resnet34-b627a593.pth; none in {folder} and IMAGENET_URL=null. Copy it there or give "
            "IMAGENET_WEIGHTS=path"
        )
    return _download_imagenet(url, folder, progress)


def _download_imagenet(url: str, folder: Path, progress: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """Download the resnet34 file into ``folder`` with the package's verified downloader.

    The file goes to a hidden name first; only when its sha256 starts with the
    prefix its name carries (torch.hub's check; the full digest of
    torchvision's file is not recorded anywhere we can read) and it holds
    ResNet-34 tensors of the right shapes is it renamed to its own name. Any
    failure leaves neither the file nor a folder this call created.

    Raises:
        DownloadError: Offline or an HTTP error (the line ends with the way to
            do it by hand, as for every weights file), a short body or a hash mismatch.
        WeightsError: The file is not torchvision resnet34 weights.
    """
    from ..errors import DownloadError, WeightsSettingError
    from ..files.atomic import ensure_writable_dir, remove_empty_dirs, remove_if_exists
    from ..weights.download import download_url_to_file, shown_folder

    name = _url_file_name(url)
    prefix = _HASH_IN_NAME.search(name).group(1)
    final = folder / name
    # The downloader's default names its destination, here the hidden staging file.
    by_hand = (
        f"download the file from {url} and put it in {shown_folder(folder)} as {name}, or give "
        "IMAGENET_WEIGHTS=<a copy you have>"
    )
    try:
        created = ensure_writable_dir(folder)
    except OSError as e:
        raise WeightsSettingError(
            f"cannot write to {folder} ({e.strerror or e}); choose a writable folder (MODEL_PARAMS_DIR=...) "
            "or give IMAGENET_WEIGHTS=<a copy you have>"
        ) from None
    staged = folder / f".{name}.download"  # hidden: never taken for the real file
    print(
        f"face_segmentation_pytorch: downloading {name} (torchvision's ImageNet resnet34, INIT=imagenet) "
        f"from {url} to {folder}",
        file=sys.stderr,
        flush=True,
    )
    try:
        digest = download_url_to_file(url, staged, progress=progress, label=name, by_hand=by_hand)
        if not digest.startswith(prefix):
            raise DownloadError(
                f"sha256 mismatch for {url}: its name {name} says its sha256 starts with {prefix}, the file's is "
                f"{digest}; the download is damaged or not that file: try again, or {by_hand}"
            )
        state = _imagenet_encoder_state(staged, url)
        os.replace(staged, final)
    except BaseException:
        remove_if_exists(staged)
        remove_empty_dirs(created)
        raise
    return final, state


def _imagenet_encoder_state(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Read torchvision's resnet34 state_dict from ``path`` and rename it onto LinkNet34's encoder.

    Args:
        path: The file.
        source: What errors name (the URL of a download, whose file is still hidden).

    Raises:
        WeightsError: Not a state_dict, or not ResNet-34 tensors of the right shapes.
    """
    from ..models.linknet import expected_state_shapes
    from ..models.resnet import load_torchvision_resnet34

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types
        raise WeightsError(
            f"{source}: not a state_dict saved with torch.save ({str(e).strip().splitlines()[0][:200]})"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: does not hold a state_dict")
    try:
        renamed = load_torchvision_resnet34(state)
    except ValueError as e:
        raise WeightsError(f"{source}: not torchvision resnet34 weights ({e})") from None
    own = expected_state_shapes()
    encoder = [k for k in own if k.startswith(("firstconv.", "firstbn.", "encoder"))]
    missing = [k for k in encoder if k not in renamed]
    wrong = [k for k in renamed if k in own and tuple(renamed[k].shape) != own[k]]
    if missing or wrong or any(k not in own for k in renamed):
        what = (
            f"missing {missing[0]}"
            if missing
            else f"{wrong[0]} has shape {tuple(renamed[wrong[0]].shape)}"
            if wrong
            else "unexpected tensors"
        )
        raise WeightsError(f"{source}: not torchvision resnet34 ImageNet weights ({what})")
    return dict(renamed)


# --------------------------------------------------------------------------- model


def _read_init_file(path: Path, family: str) -> dict:
    """A weights file, or the model of a run's ``last.pt``."""
    from ..weights.registry import check_state_dict, load_state_dict_file

    if path.is_file() and path.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            obj = None  # load_state_dict_file says what is wrong with it
        if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
            state = dict(obj["model"])
            check_state_dict(state, str(path), family)
            return state
    return load_state_dict_file(path, family)


def new_network(cfg: Mapping) -> nn.Module:
    """The untrained network of ``cfg``'s ``WEIGHTS`` entry (``CHANNEL_DIVISOR`` and
    ``INPUT_SIZE`` for FCN-8s); inside ``with torch.device("meta")`` only its shapes."""
    from ..models.fcn8s import FaceSegmentationNet
    from ..models.linknet import LinkNet34
    from ..weights.registry import get_weights

    entry = get_weights(cfg["WEIGHTS"])
    if entry.arch.name == "linknet34":
        return LinkNet34(num_classes=entry.num_classes)
    return FaceSegmentationNet(
        entry.num_classes,
        channel_divisor=cfg["CHANNEL_DIVISOR"],
        input_size=cfg["INPUT_SIZE"],
        mean_bgr=entry.mean_bgr,
    )


def build_model(cfg: Mapping, *, progress: bool = True) -> tuple[nn.Module, str]:
    """The network ``cfg`` asks for, before any device or layout change.

    Args:
        cfg: Checked settings (:func:`check_train_config`); uses ``WEIGHTS``,
            ``INIT``, ``CHANNEL_DIVISOR``, ``INPUT_SIZE``, the weights folders
            and ``IMAGENET_URL``.
        progress: Show a download's progress (INIT=pretrained, INIT=imagenet).

    Returns:
        ``(model in train mode, where its weights came from)``.

    Raises:
        WeightsError: Weights cannot be found, downloaded, verified, read or fitted.
    """
    from ..weights.registry import find_or_download_state_dict, get_weights

    entry = get_weights(cfg["WEIGHTS"])
    fam = entry.arch
    init = cfg["INIT"]
    if init in ("scratch", "imagenet"):
        model = new_network(cfg)
        origin = "random initialisation (INIT=scratch)"
        if init == "imagenet":
            path, encoder = _imagenet_weights(cfg, progress)
            model.load_state_dict(encoder, strict=False)  # the decoder stays as initialised
            origin = f"ImageNet encoder from {path}"
        return model.train(), origin
    if init == "pretrained":
        state, path = find_or_download_state_dict(cfg["MODEL_PARAMS_DIR"], weights=entry, progress=progress)
        origin = f"the published {entry.name} weights ({path})"
    else:
        state = _read_init_file(Path(init), fam.name)
        origin = str(init)
    return _own_copy(fam.build_trainable(state, entry.preprocessing)).train(), origin


def _own_copy(model: nn.Module) -> nn.Module:
    """``model`` with its tensors copied: ``Family.build`` adopts the tensors it is
    given, and a read-only or shared source must not be trained in place."""
    for p in model.parameters():
        p.data = p.data.clone()
    for b in model.buffers():
        b.data = b.data.clone()
    return model


# --------------------------------------------------------------------------- BatchNorm check
#
# BatchNorm in training normalises each channel over the batch and the map; with
# one value per channel there is nothing to normalise and torch raises
# "Expected more than 1 value per channel" at the first step. Every training
# batch has exactly BATCH_SIZE images of INPUT_SIZE x INPUT_SIZE (the last
# incomplete batch is dropped; validation runs in eval mode, on the running
# statistics), so the configurations that hit it are exactly those where
# BATCH_SIZE x (a BatchNorm layer's values per channel for one image) is 1.


def batchnorm_inputs(model: nn.Module, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Each BatchNorm layer's input shape for one ``size`` x ``size`` image, in call order.

    The forward runs in eval mode without gradients (no statistics change, no
    random numbers are drawn), on the device of the model's weights: a model
    built under ``torch.device("meta")`` costs no memory and no arithmetic.

    Args:
        model: The network (left in the mode it was in).
        size: The square input side.

    Returns:
        ``[(layer name, input shape)]``; empty for a network without BatchNorm.
    """
    seen: list[tuple[str, tuple[int, ...]]] = []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return seen
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=n: seen.append((name, tuple(args[0].shape))))
        for n, m in layers
    ]
    weight = next(model.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return seen


def _single_value_layers(model: nn.Module, size: int, batch: int) -> list[tuple[str, tuple[int, ...]]]:
    """The BatchNorm layers that would see one value per channel in a training batch."""
    return [(n, s) for n, s in batchnorm_inputs(model, size) if batch * s[0] * math.prod(s[2:]) == 1]


def check_batchnorm_values(model: nn.Module, cfg: Mapping, what: str, n_train: int) -> None:
    """Refuse a configuration that gives a BatchNorm layer one value per channel in training.

    Args:
        model: The network to train, or its shapes (``torch.device("meta")``).
        cfg: Checked settings (``INPUT_SIZE``, ``BATCH_SIZE``, ``WEIGHTS``).
        what: The network as the message names it.
        n_train: Training samples (whether a larger batch is possible).

    Raises:
        ConfigError: One line naming the layer and what to change.
    """
    from ..weights.registry import get_weights

    size, bs = cfg["INPUT_SIZE"], cfg["BATCH_SIZE"]
    hit = _single_value_layers(model, size, bs)
    if not hit:
        return
    name, shape = hit[0]
    spatial = "x".join(str(d) for d in shape[2:])
    where = f"a {spatial} feature map" if spatial else "no feature map"
    step = max(1, get_weights(cfg["WEIGHTS"]).arch.size_multiple)
    # The smallest of the next 16 sizes the network takes (up to 4x) that gives every layer 2 values or more.
    sizes = itertools.islice(range(size + step, 4 * size + 1, step), 16)
    bigger = next((s for s in sizes if not _single_value_layers(model, s, bs)), None)
    fixes = ([f"INPUT_SIZE={bigger} or more"] if bigger else []) + ["BATCH_SIZE=2 or more"]
    fix = ", or ".join(fixes)
    if n_train < 2:
        fix += f" (a batch of 2 needs 2 training images; the training set has {n_train})"
    raise ConfigError(
        f"BATCH_SIZE={bs} with INPUT_SIZE={size} gives BatchNorm layer {name} of {what} one value per channel in "
        f"training ({where}, {bs} image per batch), which it cannot normalise; use {fix}"
    )


def make_optimizer(model: nn.Module, cfg: Mapping) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over the parameters that require gradients.

    FCN-8s's fixed layers (bilinear deconvolutions, Caffe Scale constants)
    have ``requires_grad=False`` and are left out, so weight decay cannot
    shrink them either.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["OPTIMIZER"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["LR"], momentum=0.9, weight_decay=cfg["WEIGHT_DECAY"])
    return torch.optim.AdamW(params, lr=cfg["LR"], weight_decay=cfg["WEIGHT_DECAY"])


class LRSchedule:
    """Learning-rate factor by iteration, for ``torch.optim.lr_scheduler.LambdaLR``.

    A callable object (not a lambda) so that ``LambdaLR.state_dict`` keeps it.

    Args:
        kind: ``"cosine"`` (``0.5 (1 + cos(pi t / T))`` over all ``T``
            iterations of the run), ``"step"`` (``gamma`` to the number of
            ``steps`` epochs reached) or ``"constant"``.
        iters_per_epoch: Optimizer steps per epoch.
        epochs: Epochs in the run.
        steps: Epochs (1-based counts of completed epochs) where ``step`` drops.
        gamma: Factor per step.
    """

    def __init__(self, kind: str, iters_per_epoch: int, epochs: int, steps=(), gamma: float = 0.1) -> None:
        self.kind = kind
        self.iters_per_epoch = int(iters_per_epoch)
        self.epochs = int(epochs)
        self.steps = [int(s) for s in steps]
        self.gamma = float(gamma)

    def __call__(self, it: int) -> float:
        if self.kind == "cosine":
            total = max(1, self.iters_per_epoch * self.epochs)
            return 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
        if self.kind == "step":
            epoch = it // max(1, self.iters_per_epoch)
            return self.gamma ** sum(1 for s in self.steps if epoch >= s)
        return 1.0


# --------------------------------------------------------------------------- checkpoint helpers


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain contiguous CPU copy of the model's state_dict (what best.pt holds)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        # Plain ints and tuples: last.pt loads with weights_only=True.
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }
    return state


def _set_rng_state(state: Mapping, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_torch(path: Path, obj) -> None:
    from ..files.atomic import save_atomic

    save_atomic(path, lambda f: torch.save(obj, f))


def _save_text(path: Path, text: str) -> None:
    from ..files.atomic import save_atomic

    data = text.encode("utf-8")
    save_atomic(path, lambda f: f.write(data))


class _StopFlag:
    """Turns the first Ctrl-C into a request to stop at the next batch boundary.

    The step in progress finishes, then ``last.pt`` is written, so a resumed
    run continues exactly where this one stopped. A second Ctrl-C raises
    KeyboardInterrupt at once (nothing more is saved). Signal handlers exist
    only in the main thread; elsewhere Ctrl-C cannot reach the loop anyway.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._pid = os.getpid()

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            # A DataLoader worker (forked with this handler): the main process
            # decides; it stops the workers when it stops.
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nface_segmentation_pytorch.train: interrupted; finishing this batch and saving last.pt "
            "(Ctrl-C again stops at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------- trainer


@dataclass
class TrainResult:
    """What a run left behind.

    Attributes:
        out_dir: The run's folder.
        best_path: ``best.pt`` (``None`` if no epoch finished).
        last_path: ``last.pt``.
        history: The ``metrics.jsonl`` lines, as dicts.
        best_mean_iou: Best validation mean IoU (``None`` without validation).
        epochs_done: Epochs completed so far (over all resumed invocations).
        interrupted: Stopped by Ctrl-C (``last.pt`` holds the exact position).
    """

    out_dir: Path
    best_path: Path | None
    last_path: Path
    history: list[dict] = field(default_factory=list)
    best_mean_iou: float | None = None
    epochs_done: int = 0
    interrupted: bool = False


# --------------------------------------------------------------------------- resume helpers


def _out_dir_setting(settings: Mapping) -> Path:
    """``OUT_DIR`` as a path (required)."""
    if settings["OUT_DIR"] is None:
        raise ConfigError("OUT_DIR is required; see --help")
    return Path(str(settings["OUT_DIR"])).expanduser()


def _read_last_pt(out_dir: Path) -> dict:
    """The run's ``last.pt`` for RESUME=true.

    Raises:
        ConfigError: OUT_DIR is a file, or last.pt is missing, unreadable or not this trainer's.
    """
    last = out_dir / "last.pt"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"OUT_DIR={out_dir}: is a file; give a folder")
    if not last.is_file():
        raise ConfigError(f"RESUME=true but {last} does not exist; drop RESUME to start a new run")
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types
        raise ConfigError(
            f"{last}: cannot be read ({str(e).strip().splitlines()[0][:200]}); OVERWRITE=true starts over"
        ) from None
    if (
        not isinstance(ckpt, Mapping)
        or ckpt.get("format") != CHECKPOINT_FORMAT
        or not isinstance(ckpt.get("config"), Mapping)
    ):
        raise ConfigError(f"{last}: not a checkpoint of this trainer; OVERWRITE=true starts over")
    return ckpt


def _resumed_settings(saved: Mapping, settings: Mapping, given: set[str]) -> dict:
    """The settings of a resumed run: the keys given, one invocation's keys, and the run's saved values.

    Args:
        saved: The config in last.pt (checked values, paths absolute).
        settings: Every key: the ones given over the defaults.
        given: The keys given.
    """
    return {k: settings[k] if k in given or k in PER_INVOCATION or k not in saved else saved[k] for k in TRAIN_KEYS}


def _is_path_setting(key: str, value: object) -> bool:
    return key in PATH_KEYS and isinstance(value, str) and not (key == "INIT" and value in _INIT_KEYWORDS)


def _same_setting(key: str, old: object, new: object, cfg: Mapping) -> bool:
    """Whether a key given again on RESUME says what the run had.

    Paths are compared resolved (``runs/a`` is ``/home/me/runs/a``), and
    ``LR_STEPS`` / ``LR_GAMMA`` only under ``SCHEDULE=step``, the one schedule
    that reads them (elsewhere ``LR_STEPS`` is derived from ``EPOCHS`` unused).
    """
    if key in ("LR_STEPS", "LR_GAMMA") and cfg["SCHEDULE"] != "step":
        return True
    if _is_path_setting(key, old) and _is_path_setting(key, new):
        return Path(str(old)).expanduser().resolve() == Path(str(new)).expanduser().resolve()
    return old == new


def _with_absolute_paths(cfg: Mapping) -> dict:
    """``cfg`` with its paths absolute: the saved config, which a resumed run may
    read from another working folder."""
    return {k: os.path.abspath(v) if _is_path_setting(k, v) else v for k, v in cfg.items()}


def _network_of_run(cfg: Mapping, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The network a resumed run trains, without reading its INIT weights again (last.pt's replace them).

    Args:
        cfg: The run's settings.
        state: The model in last.pt: for INIT=pretrained or a file it gives the
            architecture (an FCN-8s width or class count of its own).
    """
    from ..weights.registry import get_weights

    if cfg["INIT"] in ("scratch", "imagenet"):
        return new_network(cfg).train()
    entry = get_weights(cfg["WEIGHTS"])
    return _own_copy(entry.arch.build_trainable(state, entry.preprocessing)).train()


class Trainer:
    """Train a face segmentation network as ``cfg`` says.

    Args:
        config: Settings by key (``{"DATA_DIR": ..., "EPOCHS": 2}``), over the
            defaults of :data:`TRAIN_KEYS`. With ``RESUME=true`` the keys not
            given come from the run's saved settings instead (except those of
            one invocation, :data:`PER_INVOCATION`), and those given must match
            them (:data:`RESUMABLE_CHANGES` may differ).
        model: Train this network instead of the one ``WEIGHTS`` and ``INIT``
            build: an ``nn.Module`` or a function of no arguments returning
            one (called after seeding, so its initial weights are seeded). Its
            output must be ``(N, 1, H, W)`` logits or ``(N, C, H, W)`` scores
            with background in channel 0; ``WEIGHTS`` still gives the
            preprocessing.
        **options: Settings as keyword arguments (any case), over ``config``.

    Raises:
        ConfigError: Bad settings; with ``RESUME=true`` also a missing or
            foreign ``last.pt`` and settings that differ from the run's.

    Use :meth:`run`; :func:`train` does both steps.
    """

    def __init__(
        self,
        config: Mapping[str, object] | None = None,
        *,
        model: nn.Module | Callable[[], nn.Module] | None = None,
        **options,
    ) -> None:
        merged = dict(config or {})
        merged.update(options)
        given = {str(k).upper() for k in merged}
        settings = merge_options(merged, TRAIN_KEYS)
        self._model_arg = model
        self.say = lambda text: print(f"face_segmentation_pytorch.train: {text}", file=sys.stderr, flush=True)
        self._ckpt: dict | None = None
        if settings["RESUME"] is True:  # other values: check_train_config names the mistake
            self._ckpt = _read_last_pt(_out_dir_setting(settings))
            settings = _resumed_settings(self._ckpt["config"], settings, given)
        self.cfg = check_train_config(settings, resuming=self._ckpt is not None)
        self.out_dir = Path(self.cfg["OUT_DIR"])
        if self._ckpt is not None:
            self._compare_resumed_config(self._ckpt, given)

    # ------------------------------------------------------------------ setup

    def _check_out_dir(self) -> dict | None:
        """Refuse to mix runs; return the checkpoint to resume from, if any."""
        if self._ckpt is not None:
            return self._ckpt
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"OUT_DIR={self.out_dir}: is a file; give a folder")
        earlier = [n for n in ("last.pt", "best.pt", "metrics.jsonl") if (self.out_dir / n).exists()]
        if earlier and not self.cfg["OVERWRITE"]:
            raise ConfigError(
                f"OUT_DIR={self.out_dir} already holds a run ({', '.join(earlier)}); RESUME=true continues it, "
                "OVERWRITE=true starts over, or choose another OUT_DIR"
            )
        return None

    def _compare_resumed_config(self, ckpt: Mapping, given: set[str]) -> None:
        """Refuse keys given again with values other than the run's, and an EPOCHS below what is done.

        Only keys the user gave are compared (the others came from the run), as
        the user meant them: paths resolved, the step schedule's keys only
        under that schedule.
        """
        saved, cfg = ckpt["config"], self.cfg
        diffs = [
            f"{k}: was {saved.get(k)!r}, now {cfg[k]!r}"
            for k in TRAIN_KEYS
            if k in given and k not in RESUMABLE_CHANGES and not _same_setting(k, saved.get(k), cfg[k], cfg)
        ]
        if saved.get("_MODEL") != self._model_name():
            diffs.append(f"model: was {saved.get('_MODEL')}, now {self._model_name()}")
        if diffs:
            raise ConfigError(
                "RESUME=true needs the settings of the run in OUT_DIR (they decide its curve); differences: "
                + "; ".join(diffs)
                + " (leave those keys out to keep the run's, or OVERWRITE=true starts over)"
            )
        done = int(ckpt["epoch"]) + (1 if int(ckpt["iteration"]) else 0)
        if cfg["EPOCHS"] < done:
            raise ConfigError(
                f"EPOCHS={cfg['EPOCHS']} is invalid: the run in {self.out_dir} has trained {done} epoch(s) already; "
                f"give EPOCHS={done} or more, or leave EPOCHS out"
            )
        if saved.get("EPOCHS") != cfg["EPOCHS"] and cfg["SCHEDULE"] == "cosine":
            self.say(
                f"note: EPOCHS changed from {saved.get('EPOCHS')} to {cfg['EPOCHS']}; the cosine schedule follows "
                "the new length from here on, so the curve differs from an uninterrupted run"
            )

    def _model_name(self) -> str:
        if self._model_arg is None:
            return "from WEIGHTS"
        m = self._model_arg
        return f"custom {type(m).__name__ if isinstance(m, nn.Module) else getattr(m, '__name__', type(m).__name__)}"

    def _resolve_device(self) -> torch.device:
        from ..segmentation.segmenter import resolve_device

        name = self.cfg["DEVICE"]
        try:
            device = resolve_device(name)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"DEVICE={name!r} is invalid: {e}") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"DEVICE={name!r} is not supported: use cpu or cuda")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"DEVICE={name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        if self.cfg["AMP"] and device.type != "cuda":
            raise ConfigError("AMP=true needs CUDA; training on the CPU runs in float32")
        return device

    def _discover_data(self) -> TrainingData:
        """The checked data (:class:`~.data.DataError` lists every problem), with room for one batch."""
        from .data import discover

        cfg = self.cfg
        data = discover(
            cfg["DATA_DIR"],
            val_fraction=cfg["VAL_FRACTION"],
            seed=cfg["SEED"],
            check=cfg["CHECK_DATA"],
            workers=max(2, cfg["WORKERS"]),
            progress=cfg["PROGRESS"],
        )
        for note in data.notes:
            self.say(f"note: {note}")
        bs = cfg["BATCH_SIZE"]
        if len(data.train) < bs:
            raise ConfigError(
                f"BATCH_SIZE={bs} is invalid: the training set has only {len(data.train)} sample(s); "
                "lower BATCH_SIZE or add data"
            )
        return data

    def _make_model(self, ckpt: Mapping | None) -> tuple[nn.Module, str]:
        """The network to train and where its weights come from (a resumed run: last.pt's, loaded later)."""
        if self._model_arg is not None:
            model = self._model_arg if isinstance(self._model_arg, nn.Module) else self._model_arg()
            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be an nn.Module or return one, got {type(model).__name__}")
            return model, f"the model given ({type(model).__name__})"
        if ckpt is None:
            return build_model(self.cfg, progress=self.cfg["PROGRESS"])
        return _network_of_run(self.cfg, ckpt["model"]), str(self.out_dir / "last.pt")

    def _schedule(self, iters: int) -> LRSchedule:
        """This run's learning-rate factor by iteration (``iters`` optimizer steps per epoch)."""
        cfg = self.cfg
        return LRSchedule(cfg["SCHEDULE"], iters, cfg["EPOCHS"], cfg["LR_STEPS"], cfg["LR_GAMMA"])

    def _create_out_dir(self) -> list[Path]:
        """Create OUT_DIR (clearing an earlier run for OVERWRITE); return the folders created."""
        from ..files.atomic import ensure_writable_dir

        try:
            created = ensure_writable_dir(self.out_dir)
        except OSError as e:
            raise ConfigError(f"OUT_DIR={self.out_dir}: cannot write there ({e.strerror or e})") from None
        if self.cfg["OVERWRITE"]:
            for name in ("last.pt", "best.pt", "metrics.jsonl"):
                (self.out_dir / name).unlink(missing_ok=True)
        return created

    # ------------------------------------------------------------------ run

    def run(self) -> TrainResult:
        """Check the data, build or restore everything, train, and write the outputs.

        Returns:
            A :class:`TrainResult` (``interrupted=True`` after Ctrl-C, with
            ``last.pt`` saved).

        Raises:
            ConfigError: Bad settings or data (:class:`~.data.DataError` lists
                every data problem); nothing is trained.
            WeightsError: Initial weights cannot be obtained or fitted.
            TrainingDiverged: The loss became NaN or infinite.
        """
        cfg = self.cfg
        threads = torch.get_num_threads()
        if cfg["THREADS"] is not None:
            torch.set_num_threads(cfg["THREADS"])
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)  # a setting of this run, not of the caller's process

    def _run(self) -> TrainResult:
        """Everything that can be refused is checked before OUT_DIR is made; a
        failure after that takes away the folders this run made if they are empty."""
        from ..files.atomic import remove_empty_dirs
        from ..weights.registry import get_weights

        cfg = self.cfg
        device = self._resolve_device()
        ckpt = self._check_out_dir()
        data = self._discover_data()
        if self._model_arg is None:
            # The network's shapes alone, before any weights are read or downloaded.
            with torch.device("meta"):
                shapes = new_network(cfg)
            check_batchnorm_values(shapes, cfg, cfg["WEIGHTS"], len(data.train))
        torch.manual_seed(cfg["SEED"])
        np.random.seed(cfg["SEED"])
        random.seed(cfg["SEED"])
        model, origin = self._make_model(ckpt)
        if self._model_arg is not None:
            check_batchnorm_values(model, cfg, origin, len(data.train))
        created = self._create_out_dir()
        try:
            return self._train(model.to(device).train(), origin, ckpt, data, get_weights(cfg["WEIGHTS"]), device)
        except BaseException:
            remove_empty_dirs(created)
            raise

    def _train(
        self,
        model: nn.Module,
        origin: str,
        ckpt: Mapping | None,
        data: TrainingData,
        entry: Weights,
        device: torch.device,
    ) -> TrainResult:
        """Set up the optimizer and schedule (restored from ``ckpt``), write config.yaml, and train.

        Args:
            model: The network, on ``device``, in train mode.
            origin: Where its weights came from (said once).
            ckpt: The run's ``last.pt`` when resuming.
            data: The checked training data.
            entry: The weights entry (preprocessing, family).
            device: Where it trains.
        """
        from .data import SegmentationDataset

        cfg = self.cfg
        bs = cfg["BATCH_SIZE"]
        if cfg["CHANNELS_LAST"]:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg)
        iters = len(data.train) // bs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule(iters))
        scaler = torch.amp.GradScaler("cuda", enabled=cfg["AMP"]) if device.type == "cuda" else None
        loss_fn = SegmentationLoss(cfg["JACCARD_WEIGHT"])

        start_epoch, start_iter, history, best = 0, 0, [], None
        partial = {"loss_sum": 0.0, "seconds": 0.0, "lr": None}
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            # load_state_dict wrote the saved schedule's fields into the object
            # given to LambdaLR; a new one follows this run's EPOCHS, from the
            # next step on (the optimizer holds the saved rate: the same number
            # when EPOCHS is unchanged).
            schedule = scheduler.lr_lambdas[0] = self._schedule(iters)
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * schedule(scheduler.last_epoch)
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch, start_iter = int(ckpt["epoch"]), int(ckpt["iteration"])
            history, best = list(ckpt["history"]), ckpt["best_mean_iou"]
            partial = {
                "loss_sum": float(ckpt["epoch_loss_sum"]),
                "seconds": float(ckpt["epoch_seconds"]),
                "lr": ckpt["epoch_lr"],
            }
            _set_rng_state(ckpt["rng"], device)
            origin = f"{self.out_dir / 'last.pt'} (epoch {start_epoch + 1}, batch {start_iter} of {iters})"

        saved_cfg = dict(_with_absolute_paths(cfg), _MODEL=self._model_name())
        from omegaconf import OmegaConf

        _save_text(self.out_dir / "config.yaml", OmegaConf.to_yaml({k: v for k, v in saved_cfg.items()}))
        self.say(
            f"{entry.name} ({entry.family}) from {origin}; {len(data.train)} training and "
            f"{len(data.val) if data.val is not None else 0} validation samples ({data.layout}; validation: "
            f"{data.val_origin}); {iters} steps of {bs} per epoch at {cfg['INPUT_SIZE']}x{cfg['INPUT_SIZE']}; "
            f"device {device}{' (AMP)' if cfg['AMP'] else ''}"
        )
        if cfg["INIT"] == "scratch" and self._model_arg is None and entry.family == "linknet34":
            self.say("note: INIT=scratch; the recipe starts LinkNet34 from ImageNet weights (INIT=imagenet)")

        train_ds = SegmentationDataset(
            data.train,
            entry.preprocessing,
            cfg["INPUT_SIZE"],
            augment=cfg["AUGMENT"],
            rotation=cfg["ROTATION"],
            color_jitter=cfg["COLOR_JITTER"],
            seed=cfg["SEED"],
        )
        val_ds = (
            SegmentationDataset(data.val, entry.preprocessing, cfg["INPUT_SIZE"], seed=cfg["SEED"])
            if data.val is not None
            else None
        )
        state = _RunState(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            loss_fn=loss_fn,
            device=device,
            history=history,
            best=best,
            saved_cfg=saved_cfg,
            iters=iters,
        )
        last_path, best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        epochs_this_run = 0
        interrupted = False
        with _StopFlag() as stop:
            for epoch in range(start_epoch, cfg["EPOCHS"]):
                if cfg["STOP_AFTER"] is not None and epochs_this_run >= cfg["STOP_AFTER"]:
                    break
                done = self._epoch(state, train_ds, val_ds, epoch, start_iter, partial, stop)
                start_iter, partial = 0, {"loss_sum": 0.0, "seconds": 0.0, "lr": None}
                if not done:
                    interrupted = True
                    break
                epochs_this_run += 1
        epochs_done = len(state.history)
        result = TrainResult(
            out_dir=self.out_dir,
            best_path=best_path if best_path.exists() else None,
            last_path=last_path,
            history=list(state.history),
            best_mean_iou=state.best,
            epochs_done=epochs_done,
            interrupted=interrupted,
        )
        if interrupted:
            self.say(f"stopped; {last_path} holds the exact position: RESUME=true continues the same run")
        elif epochs_done < cfg["EPOCHS"]:
            self.say(
                f"stopped after {epochs_this_run} epoch(s) as STOP_AFTER asks ({epochs_done} of {cfg['EPOCHS']} done); RESUME=true continues"
            )
        else:
            score = f"best validation mean IoU {state.best:.4f}" if state.best is not None else "no validation"
            self.say(
                f"{epochs_done} epochs done; {score}; weights in {best_path}. Run them with: python -m "
                f"face_segmentation_pytorch WEIGHTS={entry.name} WEIGHTS_FILE={best_path} "
                f"INPUT_SIZE={cfg['INPUT_SIZE']} IMGS_DIR=<folder>"
            )
        return result

    # ------------------------------------------------------------------ epochs

    def _epoch(
        self, st: _RunState, train_ds, val_ds, epoch: int, start_iter: int, partial: dict, stop: _StopFlag
    ) -> bool:
        """Train (from batch ``start_iter``) and validate one epoch; save. False when stopped."""
        from ..files.progress import progress_bar

        cfg = self.cfg
        bs, iters = cfg["BATCH_SIZE"], st.iters
        t_start = time.perf_counter() - partial["seconds"]
        # The epoch's order: a permutation seeded by (SEED, epoch), so it does
        # not depend on global state and a resumed run sees the same one.
        order = np.random.default_rng([cfg["SEED"], 1, epoch]).permutation(len(train_ds))[: iters * bs]
        order = order[start_iter * bs :].tolist()
        train_ds.epoch = epoch
        loader = torch.utils.data.DataLoader(
            train_ds,
            batch_size=bs,
            sampler=order,
            num_workers=cfg["WORKERS"],
            pin_memory=st.device.type == "cuda",
            # A private generator: making a loader iterator would otherwise draw
            # from the global torch generator, which dropout also uses.
            generator=torch.Generator().manual_seed(cfg["SEED"]),
        )
        st.model.train()
        loss_sum = torch.tensor(partial["loss_sum"], dtype=torch.float64, device=st.device)
        bar = progress_bar(iters, desc=f"epoch {epoch + 1}/{cfg['EPOCHS']}", unit="batch", enabled=cfg["PROGRESS"])
        if start_iter:
            bar.update(start_iter)
        k = start_iter
        # The rate of the epoch's last step is logged; a run resumed after its
        # last step (stopped in validation) takes it from last.pt.
        lr_used = partial["lr"] if partial["lr"] is not None else st.optimizer.param_groups[0]["lr"]
        stopped = False
        try:
            batches = iter(loader)
            while k < iters:
                if stop.requested:
                    stopped = True
                    break
                x, target, _ = next(batches)
                x = x.to(st.device, non_blocking=True)
                target = target.to(st.device, non_blocking=True)
                if cfg["CHANNELS_LAST"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr_used = st.optimizer.param_groups[0]["lr"]
                with torch.autocast(st.device.type, dtype=torch.float16, enabled=cfg["AMP"]):
                    loss = st.loss_fn(st.model(x), target)
                st.optimizer.zero_grad(set_to_none=True)
                if st.scaler is not None and cfg["AMP"]:
                    st.scaler.scale(loss).backward()
                    st.scaler.step(st.optimizer)
                    st.scaler.update()
                else:
                    loss.backward()
                    st.optimizer.step()
                st.scheduler.step()
                loss_sum += loss.detach().double()
                k += 1
                bar.update(1)
                # The CPU has the value already; on CUDA look only now and then
                # (each look waits for the device).
                if (st.device.type == "cpu" or k % 25 == 0 or k == iters) and not math.isfinite(float(loss_sum)):
                    raise TrainingDiverged(
                        f"the loss became {float(loss_sum)} in epoch {epoch + 1}, batch {k}: the learning rate "
                        f"(LR={cfg['LR']}) is probably too high; {self.out_dir / 'last.pt'} holds the last good epoch"
                    )
        finally:
            bar.close()
            del loader
        if stopped:
            self._save_last(st, epoch, k, float(loss_sum), time.perf_counter() - t_start, lr_used)
            return False

        val = self._validate(st, val_ds, stop)
        if val is None:  # Ctrl-C during validation: the epoch's training is kept
            self._save_last(st, epoch, iters, float(loss_sum), time.perf_counter() - t_start, lr_used)
            return False
        line = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum) / iters,
            "val_loss": val.get("loss"),
            "val_mean_iou": val.get("mean_iou"),
            "val_dataset_iou": val.get("dataset_iou"),
            "lr": lr_used,
            "seconds": round(time.perf_counter() - t_start, 3),
        }
        miou = line["val_mean_iou"]
        improved = st.best is None if miou is None else (st.best is None or miou > st.best)
        line["best"] = bool(improved)
        if improved:
            if miou is not None:
                st.best = miou
            _save_torch(self.out_dir / "best.pt", _cpu_state(st.model))
        st.history.append(line)
        self._save_last(st, epoch + 1, 0, 0.0, 0.0, None)
        _save_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in st.history))
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        self.say(
            f"epoch {epoch + 1}/{cfg['EPOCHS']}: train loss {line['train_loss']:.4f}, val loss {fmt(line['val_loss'])}, "
            f"val mean IoU {fmt(miou)}, dataset IoU {fmt(line['val_dataset_iou'])}, lr {lr_used:.3g}, "
            f"{line['seconds']:.1f} s" + (" (best so far: best.pt)" if improved and miou is not None else "")
        )
        return True

    @torch.no_grad()
    def _validate(self, st: _RunState, val_ds, stop: _StopFlag) -> dict | None:
        """Validation loss and IoU at the training size; ``None`` if stopped."""
        from ..files.progress import progress_bar
        from .metrics import SegmentationScores

        if val_ds is None:
            return {}
        cfg = self.cfg
        loader = torch.utils.data.DataLoader(
            val_ds, batch_size=cfg["BATCH_SIZE"], shuffle=False, num_workers=cfg["WORKERS"]
        )
        st.model.eval()
        scores = SegmentationScores()
        loss_sum, n = 0.0, 0
        bar = progress_bar(len(val_ds), desc="validating", unit="img", enabled=cfg["PROGRESS"])
        try:
            for x, target, idx in loader:
                if stop.requested:
                    return None
                x = x.to(st.device)
                target = target.to(st.device)
                if cfg["CHANNELS_LAST"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(st.device.type, dtype=torch.float16, enabled=cfg["AMP"]):
                    out = st.model(x)
                    loss = st.loss_fn(out, target)
                loss_sum += float(loss) * len(x)
                n += len(x)
                pred = face_logit(out.float()) > 0  # probability > 0.5, the seed's rule
                scores.update(pred.cpu(), target.cpu() > 0.5, [val_ds.source.name(int(i)) for i in idx])
                bar.update(len(x))
        finally:
            bar.close()
            st.model.train()
        s = scores.summary()
        return {"loss": loss_sum / max(1, n), "mean_iou": s["mean_iou"], "dataset_iou": s["dataset_iou"]}

    def _save_last(
        self, st: _RunState, epoch: int, iteration: int, loss_sum: float, seconds: float, lr: float | None
    ) -> None:
        _save_torch(
            self.out_dir / "last.pt",
            {
                "format": CHECKPOINT_FORMAT,
                "config": st.saved_cfg,
                "model": _cpu_state(st.model),
                "optimizer": st.optimizer.state_dict(),
                "scheduler": st.scheduler.state_dict(),
                "scaler": st.scaler.state_dict() if st.scaler is not None else None,
                "epoch": epoch,
                "iteration": iteration,
                "epoch_loss_sum": loss_sum,
                "epoch_seconds": seconds,
                "epoch_lr": lr,
                "history": list(st.history),
                "best_mean_iou": st.best,
                "rng": _rng_state(st.device),
            },
        )


@dataclass
class _RunState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: object
    loss_fn: nn.Module
    device: torch.device
    history: list
    best: float | None
    saved_cfg: dict
    iters: int


def train(
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    **options,
) -> TrainResult:
    """Train a face segmentation network (what ``python -m face_segmentation_pytorch.train`` runs).

    Args:
        data_dir: ``DATA_DIR``.
        out_dir: ``OUT_DIR``.
        model: See :class:`Trainer`.
        **options: Any other key of the command, in any case
            (``epochs=2, weights="fcn8s_300_no_aug", init="pretrained"``).

    Returns:
        A :class:`TrainResult`.

    Example::

        import face_segmentation_pytorch as fsp

        result = fsp.train("data", "runs/a", init="imagenet", epochs=20)
        print(result.best_mean_iou, result.best_path)
    """
    if data_dir is not None:
        options["DATA_DIR"] = data_dir
    if out_dir is not None:
        options["OUT_DIR"] = out_dir
    return Trainer(model=model, **options).run()
