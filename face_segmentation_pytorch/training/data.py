"""Training data: the three layouts, checks before training, augmentation.

Layouts of ``DATA_DIR`` (found in this order):

1. The seed's NumPy arrays: ``img_train.npy`` (``(N, 3, H, W)``, also
   ``(N, H, W, 3)``; uint8, or float in 0..1 or 0..255) with ``mask_train.npy``
   (``(N, 1, H, W)`` or ``(N, H, W)``, non-zero = face); validation from
   ``img_val.npy`` / ``mask_val.npy``, else ``img_test.npy`` / ``mask_test.npy``,
   else a seeded split of the training arrays.
2. ``train/`` and ``val/``, each holding ``images/`` and ``masks/``.
3. ``images/<stem>.<jpg|png|...>`` with ``masks/<stem>.png``; a seeded split
   by ``VAL_FRACTION``.

Every image must have a mask of its size; :func:`discover` lists all problems
(missing masks, other sizes, unreadable files) in one
:class:`DataError` before anything is trained.

Randomness here never touches a global generator: the split comes from
``SEED``, each sample's augmentation from ``(SEED, epoch, index)``. So the
same seed gives the same batches whatever ``WORKERS`` is, and a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..files.imageio import header_size
from ..weights.families import Preprocessing

__all__ = [
    "DataError",
    "Source",
    "FolderSource",
    "ArraySource",
    "Subset",
    "TrainingData",
    "discover",
    "load_mask",
    "SegmentationDataset",
    "augment_pair",
    "rotate_pair",
    "normalize",
    "synthetic_faces",
    "make_synthetic_dataset",
    "MAX_LISTED",
]

#: Problems printed in the error; the rest are counted.
MAX_LISTED = 50


class DataError(ConfigError):
    """The training data has problems; :attr:`problems` lists every one."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED]
        lines = [message] + [f"  {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- reading


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file as a boolean ``(H, W)`` array by the package's one mask rule
    (:mod:`face_segmentation_pytorch.pipeline.masks`: a palette index != 0, a 0/1
    image's 1, else the brightest colour channel at least half its range), EXIF
    orientation applied as :func:`~face_segmentation_pytorch.load_image` does for images.

    Raises:
        ImageReadError: The file cannot be read or decoded.
    """
    from ..files.masks import read_mask

    return read_mask(path).mask


class Source:
    """Images with masks, read one at a time.

    Subclasses implement ``__len__``, :meth:`load` and :meth:`name`.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``: ``(H, W, 3)`` uint8 RGB image and ``(H, W)`` boolean mask."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        """A label for sample ``i`` (file stem or ``array[i]``)."""
        raise NotImplementedError


@dataclass
class FolderSource(Source):
    """Image files and their mask files: ``pairs`` of ``(name, image, mask)``."""

    pairs: list[tuple[str, Path, Path]]

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i):
        from ..files.imageio import load_image

        _, img_path, mask_path = self.pairs[i]
        return np.asarray(load_image(img_path)), load_mask(mask_path)

    def name(self, i):
        return self.pairs[i][0]


@dataclass
class ArraySource(Source):
    """Images and masks held in (memory-mapped) NumPy arrays.

    Attributes:
        images: ``(N, 3, H, W)`` or ``(N, H, W, 3)``.
        masks: ``(N, 1, H, W)``, ``(N, H, W)`` or ``(N, H, W, 1)``; non-zero = face.
        label: Name of the image file, for sample names.
        channels_first: Whether ``images`` is NCHW.
        scale: Multiplies float images to 0..255 (255 for 0..1 data, else 1).
        mask_layout: ``"nchw"``, ``"nhw"`` or ``"nhwc"``.
    """

    images: np.ndarray
    masks: np.ndarray
    label: str
    channels_first: bool = True
    scale: float = 1.0
    mask_layout: str = "nchw"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(self, i):
        img = np.asarray(self.images[i])
        if self.channels_first:
            img = img.transpose(1, 2, 0)
        if img.dtype != np.uint8:
            img = np.clip(np.rint(img.astype(np.float32) * self.scale), 0, 255).astype(np.uint8)
        m = np.asarray(self.masks[i])
        if self.mask_layout != "nhw":
            m = m[0] if self.mask_layout == "nchw" else m[..., 0]
        return np.ascontiguousarray(img), m != 0

    def name(self, i):
        return f"{self.label}[{i}]"


@dataclass
class Subset(Source):
    """Some samples of another source, by index."""

    source: Source
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i):
        return self.source.load(self.indices[i])

    def name(self, i):
        return self.source.name(self.indices[i])


@dataclass
class TrainingData:
    """What :func:`discover` found.

    Attributes:
        train: The training samples.
        val: The validation samples (``None`` with ``VAL_FRACTION=0`` and no
            validation files).
        layout: ``"numpy"``, ``"train/val folders"`` or ``"images/masks folders"``.
        val_origin: Where the validation samples came from, in words.
        notes: Things worth a line on stderr (ignored files...).
    """

    train: Source
    val: Source | None
    layout: str
    val_origin: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- discovery

_NPY_VAL_PAIRS = (("img_val.npy", "mask_val.npy"), ("img_test.npy", "mask_test.npy"))

LAYOUT_HELP = (
    "expected one of: images/ with masks/ (masks/<stem>.png for each images/<stem>.jpg); "
    "train/ and val/ each holding images/ and masks/; or the seed's NumPy arrays "
    "img_train.npy with mask_train.npy (and img_test.npy / img_val.npy with their masks)"
)


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(n)``: ``(train, val)`` indices, each sorted."""
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng([int(seed), 0]).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def _open_npy(path: Path, problems: list[str]) -> np.ndarray | None:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problems.append(
            f"{path.name}: not a readable NumPy array file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        )
        return None


def _float_scale(arr: np.ndarray, label: str, problems: list[str], progress: bool) -> float:
    """Check a float image array's range in chunks; 255 for 0..1 data, else 1."""
    hi, lo, finite = -math.inf, math.inf, True
    step = 256
    for start in range(0, arr.shape[0], step):
        chunk = np.asarray(arr[start : start + step], dtype=np.float32)
        if not np.all(np.isfinite(chunk)):
            finite = False
            break
        hi, lo = max(hi, float(chunk.max(initial=-math.inf))), min(lo, float(chunk.min(initial=math.inf)))
    if not finite:
        problems.append(f"{label}: holds NaN or infinite values")
        return 1.0
    if lo < 0 or hi > 255:
        problems.append(
            f"{label}: float values from {lo:g} to {hi:g}; expected 0..1 or 0..255 (images, not normalised tensors)"
        )
        return 1.0
    return 255.0 if hi <= 1.0 else 1.0


def _array_source(
    folder: Path, img_name: str, mask_name: str, problems: list[str], progress: bool
) -> ArraySource | None:
    img_path, mask_path = folder / img_name, folder / mask_name
    if not mask_path.is_file():
        problems.append(f"{img_name}: no {mask_name} beside it")
        return None
    images = _open_npy(img_path, problems)
    masks = _open_npy(mask_path, problems)
    if images is None or masks is None:
        return None
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[3]):
        problems.append(f"{img_name}: shape {images.shape}; expected (N, 3, H, W) images (or (N, H, W, 3))")
        return None
    channels_first = images.shape[1] == 3
    n, (h, w) = images.shape[0], (images.shape[2:4] if channels_first else images.shape[1:3])
    if images.dtype == np.uint8:
        scale = 1.0
    elif np.issubdtype(images.dtype, np.floating):
        scale = _float_scale(images, img_name, problems, progress)
    else:
        problems.append(f"{img_name}: dtype {images.dtype}; expected uint8 (or float in 0..1 / 0..255)")
        return None
    mshape = masks.shape
    if masks.ndim == 3:
        mask_layout, (mh, mw) = "nhw", mshape[1:3]
    elif masks.ndim == 4 and mshape[1] == 1:
        mask_layout, (mh, mw) = "nchw", mshape[2:4]
    elif masks.ndim == 4 and mshape[3] == 1:
        mask_layout, (mh, mw) = "nhwc", mshape[1:3]
    else:
        problems.append(f"{mask_name}: shape {mshape}; expected (N, 1, H, W) masks (or (N, H, W))")
        return None
    if mshape[0] != n:
        problems.append(f"{mask_name}: {mshape[0]} masks for {n} images in {img_name}")
    if (mh, mw) != (h, w):
        problems.append(f"{mask_name}: masks are {mh}x{mw} (HxW) but the images in {img_name} are {h}x{w}")
    if not (np.issubdtype(masks.dtype, np.number) or masks.dtype == bool):
        problems.append(f"{mask_name}: dtype {masks.dtype}; expected numbers (non-zero = face)")
    if n == 0:
        problems.append(f"{img_name}: holds no images")
    return ArraySource(images, masks, img_name.removesuffix(".npy"), channels_first, scale, mask_layout)


def _folder_pairs(folder: Path, problems: list[str], notes: list[str], rel: Path) -> list[tuple[str, Path, Path]]:
    """Pair ``folder/images/*`` with ``folder/masks/<stem>.*`` by stem."""
    from ..files.imageio import find_images

    images, _ = find_images(folder / "images")
    masks, _ = find_images(folder / "masks")
    by_stem: dict[str, list[Path]] = {}
    for p in images:
        by_stem.setdefault(p.stem, []).append(p)
    mask_by_stem: dict[str, list[Path]] = {}
    for p in masks:
        mask_by_stem.setdefault(p.stem, []).append(p)
    pairs = []
    for stem, paths in sorted(by_stem.items()):
        if len(paths) > 1:
            problems.append(
                f"{' and '.join(str(rel / 'images' / p.name) for p in paths)}: several images with the stem "
                f"{stem!r}; rename all but one"
            )
            continue
        found = mask_by_stem.get(stem, [])
        if not found:
            problems.append(f"{rel / 'images' / paths[0].name}: no mask (expected {rel / 'masks' / (stem + '.png')})")
            continue
        if len(found) > 1:
            pngs = [m for m in found if m.suffix.lower() == ".png"]
            if len(pngs) != 1:
                problems.append(
                    f"{' and '.join(str(rel / 'masks' / m.name) for m in found)}: several masks for {stem!r}"
                )
                continue
            found = pngs
        pairs.append((stem, paths[0], found[0]))
    orphans = sorted(set(mask_by_stem) - set(by_stem))
    if orphans:
        notes.append(
            f"{len(orphans)} mask(s) in {rel / 'masks'} have no image and are ignored "
            f"(e.g. {mask_by_stem[orphans[0]][0].name})"
        )
    if not images:
        problems.append(f"{rel / 'images'}: no image files")
    return pairs


def _check_pairs(
    pairs: list[tuple[str, Path, Path]], root: Path, full: bool, workers: int, progress: bool
) -> list[str]:
    """Read every pair (headers, or whole files with ``full``); return the problems."""
    from ..errors import ImageReadError
    from ..files.imageio import load_image
    from ..files.progress import progress_bar

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    def check(pair) -> str | None:
        _, img, mask = pair
        try:
            if full:
                hw = np.asarray(load_image(img)).shape[:2]
            else:
                hw = header_size(img)
        except (ImageReadError, OSError, SyntaxError, ValueError) as e:
            return f"{rel(img)}: unreadable ({str(e).split(': ', 1)[-1]})"
        try:
            mhw = load_mask(mask).shape if full else header_size(mask)
        except (ImageReadError, OSError, SyntaxError, ValueError) as e:
            return f"{rel(mask)}: unreadable ({str(e).split(': ', 1)[-1]})"
        if tuple(mhw) != tuple(hw):
            return (
                f"{rel(mask)}: {mhw[1]}x{mhw[0]} pixels (WxH), but {rel(img)} is {hw[1]}x{hw[0]}; "
                "a mask must have its image's size"
            )
        return None

    problems = []
    bar = progress_bar(len(pairs), desc="checking data", unit="img", enabled=progress)
    try:
        # Decoding releases the GIL, so threads read files in parallel.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for result in pool.map(check, pairs):
                if result is not None:
                    problems.append(result)
                bar.update(1)
    finally:
        bar.close()
    return problems


def discover(
    data_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    check: str = "full",
    workers: int = 2,
    progress: bool = True,
) -> TrainingData:
    """Find the layout of ``data_dir``, pair images with masks, split, check.

    Args:
        data_dir: The data folder (see the module docstring for layouts).
        val_fraction: Share of samples held out for validation when the data
            has no validation part of its own.
        seed: Seeds the split (the same seed gives the same split).
        check: ``"full"`` decodes every image and mask once before training
            (a truncated file is found now, not in epoch 3); ``"header"``
            reads sizes only (fast on huge folders).
        workers: Threads for the check.
        progress: Show progress of the check on stderr.

    Raises:
        ConfigError: ``data_dir`` is missing or has none of the layouts.
        DataError: Listing every problem found (missing masks, other sizes,
            unreadable files, bad arrays).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"DATA_DIR={root}: no such folder")
    problems: list[str] = []
    notes: list[str] = []
    if (root / "img_train.npy").is_file():
        train = _array_source(root, "img_train.npy", "mask_train.npy", problems, progress)
        val, origin = None, ""
        for img_name, mask_name in _NPY_VAL_PAIRS:
            if (root / img_name).is_file():
                val = _array_source(root, img_name, mask_name, problems, progress)
                origin = img_name
                break
        if problems:
            raise DataError(
                f"DATA_DIR={root}: {len(problems)} problem(s) in the NumPy arrays (nothing was trained):", problems
            )
        if not origin:
            train, val, origin = _split_source(train, val_fraction, seed)
        return TrainingData(train, val, "numpy", origin, notes)

    if (root / "train").is_dir() and (root / "val").is_dir():
        layout = "train/val folders"
        parts = {}
        for part in ("train", "val"):
            for sub in ("images", "masks"):
                if not (root / part / sub).is_dir():
                    problems.append(f"{part}/{sub}: missing (each of train/ and val/ holds images/ and masks/)")
            if not problems:
                parts[part] = _folder_pairs(root / part, problems, notes, Path(part))
        if problems and not parts:
            raise DataError(f"DATA_DIR={root}: the train/val layout is incomplete (nothing was trained):", problems)
        all_pairs = parts.get("train", []) + parts.get("val", [])
        problems += _check_pairs(all_pairs, root, check == "full", workers, progress)
        if problems:
            raise DataError(f"DATA_DIR={root}: {len(problems)} problem(s) in the data (nothing was trained):", problems)
        return TrainingData(FolderSource(parts["train"]), FolderSource(parts["val"]), layout, "val/", notes)

    if (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = _folder_pairs(root, problems, notes, Path("."))
        problems += _check_pairs(pairs, root, check == "full", workers, progress)
        if problems:
            raise DataError(f"DATA_DIR={root}: {len(problems)} problem(s) in the data (nothing was trained):", problems)
        train, val, origin = _split_source(FolderSource(pairs), val_fraction, seed)
        return TrainingData(train, val, "images/masks folders", origin, notes)

    raise ConfigError(f"DATA_DIR={root}: no training data found; {LAYOUT_HELP}")


def _split_source(source: Source, val_fraction: float, seed: int) -> tuple[Source, Source | None, str]:
    if val_fraction <= 0:
        return source, None, "none (VAL_FRACTION=0)"
    tr, va = _split(len(source), val_fraction, seed)
    if not va:
        return source, None, "none (too few samples to hold any out)"
    return Subset(source, tr), Subset(source, va), f"a seeded {val_fraction:g} split ({len(va)} of {len(source)})"


# --------------------------------------------------------------------------- samples


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if mask.shape == (size, size):
        return mask
    pic = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return np.asarray(pic) > 127


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``0..n-1`` without repeating the edge (OpenCV's
    ``BORDER_REFLECT_101``, albumentations' default border for rotations)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def _rotation_sources(h: int, w: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel of a rotation by ``angle`` degrees (counter-clockwise
    as displayed, about the image centre, as OpenCV's ``getRotationMatrix2D``)
    takes its value from: ``(source y, source x)`` arrays."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dy, dx = yy - cy, xx - cx
    # The inverse of OpenCV's matrix (it maps source to destination).
    return s * dx + c * dy + cy, c * dx - s * dy + cx


def rotate_pair(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a uint8 ``(H, W, 3)`` image bilinearly and its ``(H, W)`` mask by
    nearest neighbour, both with reflected borders, so they stay aligned."""
    h, w = mask.shape
    sy, sx = _rotation_sources(h, w, angle)
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ya, yb = _reflect101(y0, h), _reflect101(y0 + 1, h)
    xa, xb = _reflect101(x0, w), _reflect101(x0 + 1, w)
    img = image.astype(np.float32)
    out = (
        img[ya, xa] * ((1 - fy) * (1 - fx))
        + img[ya, xb] * ((1 - fy) * fx)
        + img[yb, xa] * (fy * (1 - fx))
        + img[yb, xb] * (fy * fx)
    )
    rotated = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    my = _reflect101(np.rint(sy).astype(np.int64), h)
    mx = _reflect101(np.rint(sx).astype(np.int64), w)
    return rotated, mask[my, mx]


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    rotation: float = 15.0,
    color_jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's augmentation, applied identically to an image and its mask.

    Horizontal flip with probability 0.5; rotation by an angle uniform in
    ``[-rotation, rotation]`` degrees about the centre (image bilinear, mask
    nearest; both reflect at the border, as albumentations' ``Rotate`` does
    by default, so no black corners appear); then, if ``color_jitter > 0``,
    brightness, contrast and saturation factors each uniform in
    ``[1 - color_jitter, 1 + color_jitter]`` (image only). Works on uint8 as
    the recipe's albumentations pipeline does. NumPy only: in a training
    process whose torch threads are busy, small torch operations per sample
    were measured 50-100x slower than these.

    Args:
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` bool.
        rng: Draws the flip, angle and factors (always the same number of draws).

    Returns:
        The augmented ``(image, mask)``.
    """
    do_flip, angle = rng.random() < 0.5, rng.uniform(-rotation, rotation)
    jitter = rng.uniform(1.0 - color_jitter, 1.0 + color_jitter, size=3)
    if flip and do_flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rotation > 0 and angle != 0.0:
        image, mask = rotate_pair(image, mask, angle)
    if color_jitter > 0:
        b, c, s = (float(v) for v in jitter)
        x = image.astype(np.float32) * b
        weights = np.array([0.299, 0.587, 0.114], np.float32)
        mean_grey = float((x @ weights).mean())
        x = (x - mean_grey) * c + mean_grey
        grey = (x @ weights)[..., None]
        x = (x - grey) * s + grey
        image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def normalize(image: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """RGB ``(H, W, 3)`` uint8 -> the ``(3, H, W)`` float32 network input
    (channel order, mean, std): the final steps of
    :func:`~face_segmentation_pytorch.pipeline.preprocess.prepare_input`."""
    x = image.astype(np.float32)
    if preprocessing.channel_order == "BGR":
        x = x[..., ::-1]
    x = x - np.asarray(preprocessing.mean, np.float32)
    if any(float(v) != 1.0 for v in preprocessing.std):
        x = x / np.asarray(preprocessing.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples as the network sees them: ``(input, mask, index)``.

    Each image is resized to ``size`` with its weights entry's resampler
    (as :class:`~face_segmentation_pytorch.FaceSegmenter` resizes at
    inference) and its mask with nearest neighbour; then augmented (training)
    and normalised. The augmentation of sample ``i`` in epoch ``e`` is drawn
    from ``numpy.random.default_rng([seed, 2, e, i])``: reproducible whatever
    the number of workers and wherever a run resumes.

    Args:
        source: The samples.
        preprocessing: The weights entry's preprocessing.
        size: Square side the network is trained at.
        augment: Flip and rotate (the recipe); ``False`` for validation.
        rotation: Largest rotation in degrees.
        color_jitter: Strength of the colour jitter (0: off).
        seed: The run's seed.
    """

    def __init__(
        self,
        source: Source,
        preprocessing: Preprocessing,
        size: int,
        *,
        augment: bool = False,
        rotation: float = 15.0,
        color_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.preprocessing = preprocessing
        self.size = int(size)
        self.augment = augment
        self.rotation = float(rotation)
        self.color_jitter = float(color_jitter)
        self.seed = int(seed)
        #: Set by the trainer before each epoch's loader is made.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        from ..segmentation.preprocess import RESAMPLERS

        img, mask = self.source.load(i)
        if self.preprocessing.swap_input_channels:
            img = img[:, :, ::-1]
        if img.shape[:2] != (self.size, self.size):
            x = RESAMPLERS[self.preprocessing.resample](np.ascontiguousarray(img), (self.size, self.size))
            img = x.numpy().transpose(1, 2, 0).astype(np.uint8)  # whole numbers in 0..255 already
        mask = _resize_mask(mask, self.size)
        if self.augment:
            rng = np.random.default_rng([self.seed, 2, self.epoch, int(i)])
            img, mask = augment_pair(img, mask, rng, rotation=self.rotation, color_jitter=self.color_jitter)
        return normalize(img, self.preprocessing), torch.from_numpy(mask.astype(np.float32)), i


# --------------------------------------------------------------------------- synthetic data


def synthetic_faces(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable stand-in for face data: striped backgrounds, one blotchy
    skin-coloured ellipse per image.

    Background: sinusoidal stripes of random orientation, frequency and
    colours. Face: an ellipse (centre anywhere in the middle half, axes 12-30 % of the side,
    random angle) of a warm colour with coarse blotches. Plus pixel noise.
    Telling them apart needs colour and texture, and where the ellipse is
    differs in every image, so a model that ignores its input cannot score well.

    Returns:
        ``(images, masks)``: ``(n, size, size, 3)`` uint8 RGB and ``(n, size, size)`` bool.
    """
    rng = np.random.default_rng([int(seed), 7])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    cell = max(1, size // 16)
    for i in range(n):
        th, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35) * 64 / size
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (0.5 + 0.5 * np.sin(freq * (xx * np.cos(th) + yy * np.sin(th))))[..., None]
        background = c0 * t + c1 * (1 - t)
        base = np.array([rng.uniform(150, 230), rng.uniform(90, 150), rng.uniform(60, 120)])
        blocks = -(-size // cell)
        blotches = rng.normal(0, 25, (blocks, blocks, 1)).repeat(cell, 0).repeat(cell, 1)[:size, :size]
        face = base + blotches
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
        ay, ax = rng.uniform(0.12 * size, 0.3 * size, 2)
        ang = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
        img = np.where(inside[..., None], face, background) + rng.normal(0, 8, (size, size, 3))
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        masks[i] = inside
    return images, masks


def make_synthetic_dataset(
    folder: str | os.PathLike,
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    layout: str = "folders",
    val: int = 0,
) -> Path:
    """Write :func:`synthetic_faces` as a training data folder (a smoke test of a setup).

    Args:
        folder: Where to write (created).
        n: Training samples.
        size: Side in pixels.
        seed: Seeds the generator.
        layout: ``"folders"`` (``images/*.png`` + ``masks/*.png``; with
            ``val > 0``: ``train/`` and ``val/``) or ``"numpy"``
            (``img_train.npy`` NCHW uint8, ``mask_train.npy`` ``(N, 1, H, W)``
            0/1; with ``val > 0`` also ``img_test.npy`` / ``mask_test.npy``).
        val: Validation samples written separately (0: none).

    Returns:
        ``folder``.
    """
    from ..files.atomic import save_atomic
    from ..files.imageio import save_png_atomic

    if layout not in ("folders", "numpy"):
        raise ValueError(f"layout must be 'folders' or 'numpy', got {layout!r}")
    folder = Path(folder)
    images, masks = synthetic_faces(n + val, size, seed)
    parts = [("train", slice(0, n))] + ([("val", slice(n, n + val))] if val else [])
    for part, sl in parts:
        if layout == "numpy":
            name = "train" if part == "train" else "test"
            img, m = np.ascontiguousarray(images[sl].transpose(0, 3, 1, 2)), masks[sl][:, None].astype(np.uint8)
            save_atomic(folder / f"img_{name}.npy", lambda f, a=img: np.save(f, a))
            save_atomic(folder / f"mask_{name}.npy", lambda f, a=m: np.save(f, a))
            continue
        base = folder / part if val else folder
        for k in range(sl.start, sl.stop):
            stem = f"{part}_{k:05d}"
            save_png_atomic(images[k], base / "images" / f"{stem}.png")
            save_png_atomic(masks[k].astype(np.uint8) * 255, base / "masks" / f"{stem}.png")
    return folder
