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
import re
import sys
import urllib.parse
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from ..errors import CaffeModelError, WeightsError, WeightsSettingError
from ..files.atomic import ensure_writable_dir, remove_empty_dirs, remove_if_exists, save_atomic
from ..models.fcn8s import BGR_MEAN
from .download import download_url_to_file, extract_zip_member, shown_folder
from .families import (
    FAMILIES,
    FCN8S,
    IMAGENET_PREPROCESSING,
    Family,
    Preprocessing,
    family_of_model,
    family_of_state_dict,
)

__all__ = [
    "Weights",
    "WEIGHTS",
    "DEFAULT_WEIGHTS",
    "get_weights",
    "default_params_dir",
    "load_state_dict_file",
    "read_torch_state_dict",
    "manual_install_hint",
    "find_or_download_state_dict",
    "load_model_parameters",
    "check_state_dict",
    "apply_state_dict",
    "weights_for",
    "DEFAULT_FOR_FAMILY",
]

CACHE_ENV = "FACE_SEGMENTATION_PYTORCH_HOME"


@dataclass(frozen=True)
class Weights:
    """One published set of weights, with everything the pipeline needs to run them.

    Attributes:
        name: Key in :data:`WEIGHTS`.
        url: Where the release archive is published.
        archive_member: File inside the zip that holds the weights (``None``
            for a OneFlow checkpoint folder, found wherever it sits).
        file_format: ``"caffemodel"``, ``"state_dict"`` or ``"oneflow"`` (a
            checkpoint folder, :mod:`face_segmentation_pytorch.formats.oneflow`).
        local_stem: Name (without extension) the weights get in a params
            folder, and the name looked for there.
        sha256: Hex digest of the archive at ``url``, or ``None`` where it has
            not been recorded (then the archive's CRCs and a strict load with
            the expected shapes are what is verified, and the digest of what
            was downloaded is printed so a user can pin it).
        family: ``"fcn8s"`` or ``"linknet34"``: the architecture and how its
            output becomes a face probability (:data:`.families.FAMILIES`).
        num_classes: Output channels of the last layer.
        preprocessing: How images are fed (:class:`.families.Preprocessing`).
        cpp_face_channel: The channel the authors' C++ tool compares with
            background (FCN-8s; used only when asked for with ``face_channel``).
        description: One line for ``--help`` and the README.
    """

    name: str
    url: str
    archive_member: str | None
    file_format: str
    local_stem: str
    sha256: str | None
    family: str
    num_classes: int
    preprocessing: Preprocessing
    cpp_face_channel: int | None
    description: str

    @property
    def arch(self) -> Family:
        """The :class:`.families.Family` object."""
        return FAMILIES[self.family]

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def mean_bgr(self) -> tuple[float, float, float]:
        """The mean in BGR order (the FCN-8s entries' own order)."""
        m = tuple(self.preprocessing.mean)
        return m if self.preprocessing.channel_order == "BGR" else m[::-1]

    def local_candidates(self, folder: Path) -> list[Path]:
        """Files (or, for OneFlow, the checkpoint folder) in ``folder`` that hold
        these weights, in lookup order."""
        last = f"{self.local_stem}.caffemodel" if self.family == "fcn8s" else self.local_stem
        return [folder / f"{self.local_stem}{ext}" for ext in (".pt", ".safetensors")] + [folder / last]


_CAFFE = Preprocessing(input_size=500, channel_order="BGR", mean=BGR_MEAN, resample="bicubic")
# ImageNet statistics, RGB, Pillow's bilinear resize to 256x256: the PyTorch
# baseline's preprocessing, defined once in the families (a LinkNet34 object given
# without an entry is fed the same way).
_IMAGENET = IMAGENET_PREPROCESSING
_LINKNET_URL = "https://oneflow-public.oss-cn-beijing.aliyuncs.com/model_zoo/cv/seg/linknet_oneflow_model.zip"

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
            family="fcn8s",
            num_classes=21,
            preprocessing=_CAFFE,
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
            family="fcn8s",
            num_classes=2,
            preprocessing=replace(_CAFFE, input_size=300),
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
            family="fcn8s",
            num_classes=21,
            preprocessing=_CAFFE,
            cpp_face_channel=15,
            description="the earlier PyTorch port's conversion of the 500x500 model (state_dict zip)",
        ),
        Weights(
            name="linknet34_oneflow",
            url=_LINKNET_URL,
            archive_member=None,
            file_format="oneflow",
            local_stem="linknet_oneflow_model",
            sha256=None,
            family="linknet34",
            num_classes=1,
            preprocessing=_IMAGENET,
            cpp_face_channel=None,
            description="LinkNet34 of the OneFlow face segmentation work (256x256, one logit; "
            "OneFlow checkpoint zip), fed RGB with ImageNet statistics",
        ),
        Weights(
            name="linknet34_oneflow_demo",
            url=_LINKNET_URL,
            archive_member=None,
            file_format="oneflow",
            local_stem="linknet_oneflow_model",
            sha256=None,
            family="linknet34",
            num_classes=1,
            # The OneFlow demo's exact numbers: Caffe's ImageNet mean (not 0.456*255)
            # on the frame's BGR pixels.
            preprocessing=replace(
                _IMAGENET, mean=(123.68, 116.779, 103.939), std=(58.393, 57.12, 57.375), swap_input_channels=True
            ),
            cpp_face_channel=None,
            description="the same LinkNet34 weights fed as the OneFlow demo fed them (BGR frames "
            "with RGB statistics, a bug of the demo); only to reproduce its output",
        ),
    )
}
DEFAULT_WEIGHTS = "fcn8s_500"
#: The entry each family falls back to where none is named.
DEFAULT_FOR_FAMILY = {"fcn8s": "fcn8s_500", "linknet34": "linknet34_oneflow"}


def get_weights(name: str | Weights) -> Weights:
    """Look up a :data:`WEIGHTS` entry by name."""
    if isinstance(name, Weights):
        return name
    try:
        return WEIGHTS[name]
    except KeyError:
        raise WeightsSettingError(f"unknown weights {name!r}; choose one of: {', '.join(WEIGHTS)}") from None


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


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str, family: Family | str | None = None
) -> dict[str, int]:
    """Check that ``state_dict`` fits a network of its family exactly.

    Args:
        state_dict: The tensors.
        source: Where they came from (named in errors).
        family: The family they must be; ``None`` tells it from the names.

    Returns:
        The architecture (``num_classes``, and ``channel_divisor`` for FCN-8s).

    Raises:
        WeightsError: naming ``source`` and the first missing, unexpected or
            wrongly shaped tensor.
    """
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{source}: does not hold a state_dict (a mapping of names to tensors)")
    if family is None:
        fam = family_of_state_dict(state_dict, source)
    else:
        fam = FAMILIES[family] if isinstance(family, str) else family
    return fam.check_state_dict(state_dict, source)


#: What to do about a damaged weights file, whichever way it got there.
_REDO = "delete it to download it again, or convert the source again"

#: The start of a pre-1.6 ``torch.save`` file: its magic number, pickled (protocol 2).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _first_sentence(e: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, whole (torch's run to several lines)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split()) or type(e).__name__  # no terminal colours
    end = text.find(". ")
    text = text[: end + 1] if 0 < end < limit else text
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + "..."


def _zip_damage(path: Path, size: int) -> str | None:
    """Why a zip-format ``torch.save`` file is incomplete, or ``None`` if its zip structure is whole."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()  # reads every entry and checks its CRC
    except zipfile.BadZipFile as e:
        if str(e) == "File is not a zip file":  # no end-of-directory record: cut short
            return f"the file stops at {size:,} bytes, without the zip directory torch.save writes at the end"
        return str(e)
    except (OSError, EOFError, ValueError) as e:
        return _first_sentence(e)
    return f"entry {bad} fails its CRC check" if bad else None


def _torch_file_damage(path: Path, error: BaseException) -> str | None:
    """Why ``path``, a ``torch.save`` file that failed to load with ``error``, is incomplete;
    ``None`` when it is whole or not a ``torch.save`` file at all."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format (torch >= 1.6)
        return _zip_damage(path, size)
    legacy = _LEGACY_TORCH_MAGIC.startswith(head)
    if legacy and (isinstance(error, EOFError) or "unexpected EOF" in str(error)):
        return f"its data ends early, after {size:,} bytes"
    return None


def _torch_load_reason(path: Path, error: BaseException) -> str:
    """Why a whole file did not load with ``torch.load(weights_only=True)``, in a few words."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip format, or a pickle
        return "it is neither torch.save's zip format nor its older pickle format"
    text = str(error)
    marker = "WeightsUnpickler error:"  # after torch's advice on loading untrusted files
    if marker in text:
        return "it holds more than tensors: " + _first_sentence(RuntimeError(text.split(marker, 1)[1]))
    return _first_sentence(error)


def read_torch_state_dict(path: str | os.PathLike) -> Mapping:
    """``torch.load`` a ``.pt`` / ``.pth`` file with ``weights_only=True``, with one-line errors.

    A checkpoint holding its weights under ``"state_dict"`` gives those.
    The result is not checked against a network (see :func:`load_state_dict_file`).

    Args:
        path: The file.

    Returns:
        What the file holds (a mapping of names to tensors for weights files).

    Raises:
        WeightsError: No such file; a truncated or damaged file ("not a
            complete PyTorch file", with the reason); anything else that is
            not a ``torch.save`` file of plain tensors (pickled code, another format).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as e:  # unpickling errors have many types
        damage = _torch_file_damage(path, e) if path.is_file() else None
        if damage is not None:
            raise WeightsError(
                f"{path}: not a complete PyTorch file (truncated or damaged: {damage}); {_REDO}"
            ) from None
        raise WeightsError(
            f"{path}: not a state_dict saved with torch.save ({_torch_load_reason(path, e)}); "
            "convert a caffemodel or OneFlow checkpoint with python -m face_segmentation_pytorch.convert"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return state


def _safetensors_damage(path: Path) -> str | None:
    """Why a ``.safetensors`` file is incomplete (shorter than its header says), or ``None``.

    The format: an 8-byte little-endian header length, a JSON header giving
    each tensor's byte range, then the data.
    """
    import json

    size = path.stat().st_size
    if size < 8:
        return f"the file has {size} bytes, fewer than the 8 of its header's length"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > 100 * 2**20:  # no real header is this long: not a safetensors file at all
            return None
        if 8 + n > size:
            return f"its header alone should have {n:,} bytes; the file has {size:,}"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not valid JSON"
    if 8 + n + end > size:
        return f"the file has {size:,} of the {8 + n + end:,} bytes its header lists"
    return None


def _read_safetensors(path: Path) -> Mapping[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors, with one-line errors (see :func:`read_torch_state_dict`)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(
            f"{path}: reading .safetensors needs the safetensors package; pip install safetensors, or use the .pt file"
        ) from None
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        damage = _safetensors_damage(path) if path.is_file() else None
        if damage is not None:
            raise WeightsError(
                f"{path}: not a complete safetensors file (truncated or damaged: {damage}); {_REDO}"
            ) from None
        raise WeightsError(f"{path}: not a readable safetensors file ({_first_sentence(e)})") from None


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".zip":
        from ..formats.oneflow import load_oneflow_checkpoint

        return load_oneflow_checkpoint(path)  # raises a WeightsError of its own
    if suffix == ".caffemodel":
        from ..formats.caffe import load_caffemodel_as_statedict

        try:
            return load_caffemodel_as_statedict(path)
        except CaffeModelError as e:
            raise WeightsError(str(e)) from None
    if suffix == ".safetensors":
        return _read_safetensors(path)
    return read_torch_state_dict(path)


def load_state_dict_file(path: str | os.PathLike, family: Family | str | None = None) -> dict[str, torch.Tensor]:
    """Load and check weights from a ``.pt``, ``.safetensors`` or ``.caffemodel``
    file, or a OneFlow checkpoint (a folder or its ``.zip``).

    ``.pt`` files are loaded with ``weights_only=True``.

    Args:
        path: The file or folder.
        family: The family the weights must be of; ``None`` tells it from the names.

    Raises:
        WeightsError: The file cannot be read or does not fit the network.
    """
    path = Path(path)
    state = _read_state_dict(path)
    check_state_dict(state, str(path), family)
    return dict(state)


#: Weights files an archive may hold, whatever the entry's own format: a zip
#: given as WEIGHTS_URL may carry a converted state_dict (the earlier port's
#: release) where the entry publishes a caffemodel; the strict shape check
#: decides whether it fits.
ARCHIVE_WEIGHT_SUFFIXES = (".caffemodel", ".pt", ".pth", ".safetensors")


def _holds_one_weights_file(archive: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError):
        return True  # let extract_zip_member say what is wrong with it
    return sum(n.lower().endswith(ARCHIVE_WEIGHT_SUFFIXES) for n in names) == 1


def manual_install_hint(weights: Weights, folder: str | os.PathLike, url: str) -> str:
    """What to do by hand when ``url`` cannot be downloaded: where to get the file, and the
    name it must have in ``folder`` to be found (the end of the download error line).

    Args:
        weights: The entry (its file names and format).
        folder: The weights folder, as the user gave it.
        url: The URL that was tried (the entry's or WEIGHTS_URL).
    """
    where = shown_folder(folder)
    stem = weights.local_stem
    convert = "python -m face_segmentation_pytorch.convert"
    if weights.file_format == "oneflow":
        archive = PurePosixPath(urllib.parse.urlsplit(url).path).name or f"{stem}.zip"
        return (
            f"download the file from {url} and convert it into {where}: {convert} SOURCE={archive} OUT={where}{stem}.pt"
        )
    # Name the archive's entry only for the published archive: another URL may hold another file.
    member = f" ({weights.archive_member})" if url == weights.url and weights.archive_member else ""
    if weights.file_format == "state_dict":
        return f"download the file from {url} and put the weights file it holds{member} in {where} as {stem}.pt"
    return (
        f"download the file from {url} and put the caffemodel it holds{member} in {where} as "
        f"{stem}.caffemodel, or as {stem}.pt ({convert} SOURCE={stem}.caffemodel OUT={where}{stem}.pt)"
    )


def _fetch(weights: Weights, folder: Path, url: str, sha256: str | None, progress: bool):
    """Download, extract, verify and install ``weights`` into ``folder``."""
    try:
        created = ensure_writable_dir(folder)
    except OSError as e:
        raise WeightsSettingError(
            f"cannot write to {folder} ({e.strerror or e}); choose a writable folder (MODEL_PARAMS_DIR=...)"
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
        digest = download_url_to_file(
            url,
            archive,
            sha256=sha256,
            progress=progress,
            label=label,
            by_hand=manual_install_hint(weights, folder, url),
        )
        if weights.file_format == "oneflow" and not _holds_one_weights_file(archive):
            # A OneFlow checkpoint tree: read it from the zip and install it
            # converted, as <stem>.pt (found first on the next run).
            from ..formats.oneflow import load_oneflow_checkpoint

            state = load_oneflow_checkpoint(archive)
            weights.arch.check_state_dict(state, url)
            staged.append(folder / f".{weights.local_stem}.unverified.pt")
            members.append(archive.name)
            save_atomic(staged[0], lambda f: torch.save(dict(state), f))
        else:
            extract_zip_member(archive, stage, member=weights.archive_member, suffix=ARCHIVE_WEIGHT_SUFFIXES)
        try:
            state = load_state_dict_file(staged[0], weights.family)
        except WeightsError as e:
            # Name what the user gave (the URL and the entry), not our hidden staging file.
            reason = str(e).split(": ", 1)[-1]
            raise WeightsError(
                f"{url}: {members[0]} in the archive does not load ({reason}); check WEIGHTS_URL and WEIGHTS"
            ) from None
        arch = check_state_dict(state, url, weights.family)
        # Any archive must match the entry's class count (its input size and
        # face channel depend on it); the published one must be full width too.
        full = arch.get("channel_divisor", 1) == 1
        if arch["num_classes"] != weights.num_classes or (url == weights.url and not full):
            others = [
                w.name for w in WEIGHTS.values() if w.family == weights.family and w.num_classes == arch["num_classes"]
            ]
            raise WeightsError(
                f"{url}: holds a {arch['num_classes']}-class net with channel divisor "
                f"{arch.get('channel_divisor', 1)}, expected the {weights.num_classes}-class "
                f"{weights.name}; pick the matching WEIGHTS entry" + (f" ({', '.join(others)})" if others else "")
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
    (FCN-8s) or the OneFlow checkpoint folder ``<stem>/`` (LinkNet34) in that
    order (``<stem>`` is ``face_seg_fcn8s`` for the default weights).
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
        if candidate.is_file() or (entry.file_format == "oneflow" and candidate.is_dir()):
            return load_state_dict_file(candidate, entry.family), candidate
    return _fetch(
        entry,
        folder,
        url or entry.url,
        sha256 if sha256 is not None else (entry.sha256 if url is None else None),
        progress,
    )


def weights_for(state_dict: Mapping[str, torch.Tensor], requested: str | Weights) -> Weights:
    """The entry that describes ``state_dict``: the requested one if its family
    and class count fit, else the published entry of that family with that
    many classes."""
    entry = get_weights(requested)
    fam = family_of_state_dict(state_dict, "weights")
    n = fam.check_state_dict(state_dict, "weights")["num_classes"]
    if entry.family == fam.name and entry.num_classes == n:
        return entry
    for other in WEIGHTS.values():
        if other.family == fam.name and other.num_classes == n:
            return other
    return entry


def apply_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike, requested: str | Weights
) -> Weights:
    """Load a checked ``state`` into ``model`` strictly and return the entry
    that describes it (what :func:`load_model_parameters` does after finding
    the weights).

    An FCN-8s model's class count follows the weights (the 300x300 release
    has 2), and its ``input_size`` and ``mean_bgr`` are set from the entry.

    Raises:
        WeightsError: The weights are of another family or width than ``model``.
    """
    fam = family_of_model(model)
    got = family_of_state_dict(state, str(source))
    if got is not fam:
        raise WeightsError(
            f"{source}: {got.name} weights, but the model is a {fam.name}; build the model "
            "that fits the weights (or use FaceSegmenter, which does)"
        )
    arch = fam.check_state_dict(state, str(source))
    if "channel_divisor" in arch:
        if arch["channel_divisor"] != model.channel_divisor:
            raise WeightsError(
                f"{source}: weights for channel divisor {arch['channel_divisor']}, but the model has "
                f"{model.channel_divisor}; build it with FaceSegmentationNet.from_state_dict"
            )
        if arch["num_classes"] != model.num_classes:
            model.set_num_classes(arch["num_classes"])
    elif arch["num_classes"] != model.num_classes:
        raise WeightsError(
            f"{source}: weights for {arch['num_classes']} classes, but the model has "
            f"{model.num_classes}; build it with {type(model).__name__}.from_state_dict"
        )
    model.load_state_dict(state, strict=True)
    entry = weights_for(state, requested)
    if fam.name == FCN8S.name:
        model.input_size = entry.input_size
        model.mean_bgr = tuple(entry.mean_bgr)
    return entry


def load_model_parameters(
    model: nn.Module,
    params_dir: str | os.PathLike | None = None,
    *,
    weights: str | Weights | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Weights:
    """Load pretrained weights into ``model``, finding or downloading them.

    The model's number of classes follows the weights (the 300x300 release
    has 2), and an FCN-8s model's ``input_size`` and ``mean_bgr`` are set
    from the weights entry so :meth:`FaceSegmentationNet.img_to_input`
    prepares images as the weights expect.

    Args:
        model: The network to fill (a ``FaceSegmentationNet`` or a ``LinkNet34``).
        params_dir: Folder with (or for) the weights; ``None`` uses
            :func:`default_params_dir`.
        weights: Name of a :data:`WEIGHTS` entry; ``None``: the default entry
            of the model's family (``fcn8s_500``, ``linknet34_oneflow``).
        url: Download from here instead of the entry's URL.
        sha256: Expected sha256 of the downloaded archive.
        progress: Show download progress on stderr.

    Returns:
        The :class:`Weights` entry that describes what was loaded.

    Raises:
        WeightsError: See :func:`find_or_download_state_dict`; also when the
            weights are for a network of another family or width than ``model``.
    """
    if weights is None:
        weights = DEFAULT_FOR_FAMILY[family_of_model(model).name]
    state, path = find_or_download_state_dict(params_dir, weights=weights, url=url, sha256=sha256, progress=progress)
    return apply_state_dict(model, state, path, weights)
