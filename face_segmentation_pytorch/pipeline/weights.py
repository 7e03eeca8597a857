"""Published weights described as data, and the loader that finds or fetches them.

Each :class:`Weights` entry knows where its file lives, how to check it, and
how its network expects to be fed (classes, input size, mean, face channel).
:func:`load_model_parameters` looks in a folder first (state_dict, then
safetensors, then caffemodel) and downloads only when nothing is there. It
never returns with untrained weights: every path ends in a strict load or an
exception.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from ..errors import CaffeModelError, WeightsError, WeightsSettingError
from .atomic import ensure_writable_dir, remove_empty_dirs, remove_if_exists
from .download import download_url_to_file, extract_zip_member
from ..models.fcn8s import BGR_MEAN, FaceSegmentationNet, _expected_state_shapes, architecture_from_state_dict

__all__ = [
    "Weights",
    "WEIGHTS",
    "DEFAULT_WEIGHTS",
    "get_weights",
    "default_params_dir",
    "load_state_dict_file",
    "find_or_download_state_dict",
    "load_model_parameters",
    "check_state_dict",
]

CACHE_ENV = "FACE_SEGMENTATION_PYTORCH_HOME"


@dataclass(frozen=True)
class Weights:
    """One published set of weights.

    Attributes:
        name: Key in :data:`WEIGHTS`.
        url: Where the release archive is published.
        archive_member: File inside the zip that holds the weights.
        file_format: ``"caffemodel"`` or ``"state_dict"``.
        local_stem: Name (without extension) the weights get in a params
            folder, and the name looked for there.
        sha256: Hex digest of the archive at ``url``, or ``None`` where it has
            not been recorded (then the archive's CRCs and a strict load with
            the expected shapes are what is verified, and the digest of what
            was downloaded is printed so a user can pin it).
        num_classes: Output channels of the score layers.
        input_size: Side the network was trained at; images are resized to it.
        mean_bgr: Mean subtracted from the BGR input.
        cpp_face_channel: The channel the authors' C++ tool compares with
            background (used only when asked for with ``face_channel``).
        description: One line for ``--help`` and the README.
    """

    name: str
    url: str
    archive_member: str
    file_format: str
    local_stem: str
    sha256: str | None
    num_classes: int
    input_size: int
    mean_bgr: tuple[float, float, float]
    cpp_face_channel: int
    description: str

    def local_candidates(self, folder: Path) -> list[Path]:
        """Files in ``folder`` that hold these weights, in lookup order."""
        return [folder / f"{self.local_stem}{ext}" for ext in (".pt", ".safetensors", ".caffemodel")]


WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        Weights(
            name="fcn8s_500",
            url="https://github.com/YuvalNirkin/face_segmentation/releases/download/1.0/face_seg_fcn8s.zip",
            archive_member="face_seg_fcn8s/face_seg_fcn8s.caffemodel",
            file_format="caffemodel",
            local_stem="face_seg_fcn8s",
            sha256=None,
            num_classes=21,
            input_size=500,
            mean_bgr=BGR_MEAN,
            cpp_face_channel=15,
            description="the authors' 500x500 caffemodel (release 1.0, 21 outputs)",
        ),
        Weights(
            name="fcn8s_300_no_aug",
            url="https://github.com/YuvalNirkin/face_segmentation/releases/download/1.1/face_seg_fcn8s_300_no_aug.zip",
            archive_member="face_seg_fcn8s_300_no_aug/face_seg_fcn8s_300.caffemodel",
            file_format="caffemodel",
            local_stem="face_seg_fcn8s_300",
            sha256=None,
            num_classes=2,
            input_size=300,
            mean_bgr=BGR_MEAN,
            cpp_face_channel=1,
            description="the authors' 300x300 caffemodel trained without augmentation (release 1.1, 2 outputs)",
        ),
        Weights(
            name="fcn8s_500_port",
            url="https://github.com/andres-fr/face_segmentation_pytorch/releases/download/1.0/face_seg_fcn8s.zip",
            archive_member="face_seg_fcn8s.pt",
            file_format="state_dict",
            local_stem="face_seg_fcn8s",
            sha256=None,
            num_classes=21,
            input_size=500,
            mean_bgr=BGR_MEAN,
            cpp_face_channel=15,
            description="the earlier PyTorch port's conversion of the 500x500 model (state_dict zip)",
        ),
    )
}
DEFAULT_WEIGHTS = "fcn8s_500"


def get_weights(name: str | Weights) -> Weights:
    """Look up a :data:`WEIGHTS` entry by name."""
    if isinstance(name, Weights):
        return name
    try:
        return WEIGHTS[name]
    except KeyError:
        raise WeightsSettingError(
            f"unknown weights {name!r}; choose one of: {', '.join(WEIGHTS)}"
        ) from None


def default_params_dir() -> Path:
    """Folder for weights when none is given.

    ``$FACE_SEGMENTATION_PYTORCH_HOME`` if set, else
    ``$XDG_CACHE_HOME/face_segmentation_pytorch``, else
    ``~/.cache/face_segmentation_pytorch``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "face_segmentation_pytorch"


def check_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    """Check that ``state_dict`` fits a :class:`FaceSegmentationNet` exactly.

    Returns:
        The architecture (``num_classes``, ``channel_divisor``).

    Raises:
        WeightsError: naming ``source`` and the first missing, unexpected or
            wrongly shaped tensor.
    """
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise WeightsError(f"{source}: does not hold a state_dict (a mapping of names to tensors)")
    try:
        arch = architecture_from_state_dict(state_dict)
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(
            f"{source}: not weights of the FCN-8s face segmentation net ({e!s} missing or wrong)"
        ) from None
    expected = _expected_state_shapes(**arch)
    for key, shape in expected.items():
        if key not in state_dict:
            raise WeightsError(f"{source}: tensor {key!r} is missing (expected shape {shape})")
        got = tuple(state_dict[key].shape)
        if got != shape:
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {got}, expected {shape} "
                f"for a {arch['num_classes']}-class net"
            )
    extra = [k for k in state_dict if k not in expected]
    if extra:
        raise WeightsError(f"{source}: unexpected tensors {', '.join(extra[:5])}")
    return arch


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load and check weights from a ``.pt``, ``.safetensors`` or ``.caffemodel`` file.

    ``.pt`` files are loaded with ``weights_only=True``.

    Raises:
        WeightsError: The file cannot be read or does not fit the network.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".caffemodel":
        from ..formats.caffe import load_caffemodel_as_statedict

        try:
            state = load_caffemodel_as_statedict(path)
        except CaffeModelError as e:
            raise WeightsError(str(e)) from None
    elif suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(
                f"{path}: reading .safetensors needs the safetensors package; "
                "pip install safetensors, or use the .pt file"
            ) from None
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise WeightsError(f"{path}: no such file") from None
        except Exception as e:  # unpickling errors have many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(
                f"{path}: not a state_dict saved with torch.save ({first[:200]}); "
                "convert a caffemodel with python -m face_segmentation_pytorch.convert"
            ) from None
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
    check_state_dict(state, str(path))
    return dict(state)


#: Weights files an archive may hold, whatever the entry's own format: a zip
#: given as WEIGHTS_URL may carry a converted state_dict (the earlier port's
#: release) where the entry publishes a caffemodel; the strict shape check
#: decides whether it fits.
ARCHIVE_WEIGHT_SUFFIXES = (".caffemodel", ".pt", ".pth", ".safetensors")


def _fetch(weights: Weights, folder: Path, url: str, sha256: str | None, progress: bool):
    """Download, extract, verify and install ``weights`` into ``folder``."""
    try:
        created = ensure_writable_dir(folder)
    except OSError as e:
        raise WeightsSettingError(
            f"cannot write to {folder} ({e.strerror or e}); choose a writable folder "
            "(MODEL_PARAMS_DIR=...)"
        ) from None
    # A hidden name of our own, so no file of the user's is overwritten or deleted.
    archive = folder / f".{weights.local_stem}.download.zip"
    staged: list[Path] = []
    members: list[str] = []

    def stage(member: str) -> Path:
        members.append(member)
        # Hidden and unverified until the strict load passes; the suffix lets the loader dispatch.
        ext = Path(member).suffix.lower()
        staged.append(folder / f".{weights.local_stem}.unverified{'.pt' if ext == '.pth' else ext}")
        return staged[-1]

    label = PurePosixPath(urllib.parse.urlsplit(url).path).name or weights.name
    print(f"face_segmentation_pytorch: downloading {weights.name} from {url} to {folder}", file=sys.stderr)
    try:
        digest = download_url_to_file(url, archive, sha256=sha256, progress=progress, label=label)
        extract_zip_member(archive, stage, member=weights.archive_member, suffix=ARCHIVE_WEIGHT_SUFFIXES)
        try:
            state = load_state_dict_file(staged[0])
        except WeightsError as e:
            # Name what the user gave (the URL and the entry), not our hidden staging file.
            reason = str(e).split(": ", 1)[-1]
            raise WeightsError(
                f"{url}: {members[0]} in the archive does not load ({reason}); "
                "check WEIGHTS_URL and WEIGHTS"
            ) from None
        arch = architecture_from_state_dict(state)
        # Any archive must match the entry's class count (its input size and
        # face channel depend on it); the published one must be full width too.
        full = {"num_classes": weights.num_classes, "channel_divisor": 1}
        if arch["num_classes"] != weights.num_classes or (url == weights.url and arch != full):
            others = [w.name for w in WEIGHTS.values() if w.num_classes == arch["num_classes"]]
            raise WeightsError(
                f"{url}: holds a {arch['num_classes']}-class net with channel divisor "
                f"{arch['channel_divisor']}, expected the {weights.num_classes}-class "
                f"{weights.name}; pick the matching WEIGHTS entry"
                + (f" ({', '.join(others)})" if others else "")
            )
        final = folder / f"{weights.local_stem}{staged[0].suffix}"
        os.replace(staged[0], final)
    except BaseException:
        for p in staged:
            remove_if_exists(p)
        remove_if_exists(archive)
        remove_empty_dirs(created)
        raise
    remove_if_exists(archive)
    if sha256 is None:
        print(
            f"face_segmentation_pytorch: no sha256 is recorded for {weights.name}; "
            f"the downloaded archive has sha256 {digest} (pin it with WEIGHTS_SHA256={digest})",
            file=sys.stderr,
        )
    return state, final


def find_or_download_state_dict(
    params_dir: str | os.PathLike | None = None,
    *,
    weights: str | Weights = DEFAULT_WEIGHTS,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], Path]:
    """Return a checked state_dict from ``params_dir``, downloading it if needed.

    Looks for ``<stem>.pt``, ``<stem>.safetensors`` and ``<stem>.caffemodel``
    in that order (``<stem>`` is ``face_seg_fcn8s`` for the default weights).
    When none exists, the archive at ``url`` (default: the entry's) is
    downloaded, checked against ``sha256`` (default: the entry's, if known),
    extracted, verified by a strict shape check and installed in the folder.

    Returns:
        ``(state_dict, path of the file it came from)``.

    Raises:
        WeightsError: A local file is unreadable or of the wrong shape, or the
            download failed (:class:`~face_segmentation_pytorch.errors.DownloadError`).
    """
    entry = get_weights(weights)
    folder = Path(params_dir).expanduser() if params_dir is not None else default_params_dir()
    if folder.exists() and not folder.is_dir():
        raise WeightsSettingError(f"{folder}: is a file; MODEL_PARAMS_DIR must be a folder")
    for candidate in entry.local_candidates(folder):
        if candidate.is_file():
            return load_state_dict_file(candidate), candidate
    return _fetch(
        entry,
        folder,
        url or entry.url,
        sha256 if sha256 is not None else (entry.sha256 if url is None else None),
        progress,
    )


def weights_for(state_dict: Mapping[str, torch.Tensor], requested: str | Weights) -> Weights:
    """The entry that describes ``state_dict``: the requested one if its class
    count fits, else the published entry with that many classes."""
    entry = get_weights(requested)
    n = architecture_from_state_dict(state_dict)["num_classes"]
    if entry.num_classes == n:
        return entry
    for other in WEIGHTS.values():
        if other.num_classes == n:
            return other
    return entry


def load_model_parameters(
    model: FaceSegmentationNet,
    params_dir: str | os.PathLike | None = None,
    *,
    weights: str | Weights = DEFAULT_WEIGHTS,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Weights:
    """Load pretrained weights into ``model``, finding or downloading them.

    The model's number of classes follows the weights (the 300x300 release
    has 2), and its ``input_size`` and ``mean_bgr`` are set from the weights
    entry so :meth:`FaceSegmentationNet.img_to_input` prepares images as the
    weights expect.

    Args:
        model: The network to fill.
        params_dir: Folder with (or for) the weights; ``None`` uses
            :func:`default_params_dir`.
        weights: Name of a :data:`WEIGHTS` entry.
        url: Download from here instead of the entry's URL.
        sha256: Expected sha256 of the downloaded archive.
        progress: Show a download progress bar on stderr.

    Returns:
        The :class:`Weights` entry that describes what was loaded.

    Raises:
        WeightsError: See :func:`find_or_download_state_dict`; also when the
            weights are for a network of another width than ``model``.
    """
    state, path = find_or_download_state_dict(
        params_dir, weights=weights, url=url, sha256=sha256, progress=progress
    )
    arch = architecture_from_state_dict(state)
    if arch["channel_divisor"] != model.channel_divisor:
        raise WeightsError(
            f"{path}: weights for channel divisor {arch['channel_divisor']}, but the model has "
            f"{model.channel_divisor}; build it with FaceSegmentationNet.from_state_dict"
        )
    if arch["num_classes"] != model.num_classes:
        model.set_num_classes(arch["num_classes"])
    model.load_state_dict(state, strict=True)
    entry = weights_for(state, weights)
    model.input_size = entry.input_size
    model.mean_bgr = tuple(entry.mean_bgr)
    return entry
