"""Scoring predicted masks against ground truth: files on disk, or a model's output.

Three sources of predictions:

- :func:`evaluate_predictions`: a folder of masks or heatmaps, matched to the
  ground-truth masks by stem (``<stem>.png``, the CLI's ``<stem>__mask.png`` /
  ``<image name>__mask.png`` and ``__heatmap.png`` / ``__heatmap16.png`` /
  ``__heatmap.npy``);
- :func:`evaluate_segmenter`: a :class:`~face_segmentation_pytorch.FaceSegmenter`
  run on a folder of images whose masks are in another folder;
- :func:`evaluate_data_dir`: the segmenter on the validation part of a
  training data folder (the seed's ``img_test.npy``: its test protocol).

Both return an :class:`EvalReport`: the scores of
:class:`~.metrics.SegmentationScores` (the seed's ``mean_iou`` first), the
per-image list, and every ground truth that could not be scored (no
prediction, unreadable, another size) as a failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files.masks import MaskFile
from .metrics import SegmentationScores

__all__ = [
    "EvalReport",
    "find_masks",
    "index_predictions",
    "read_prediction",
    "read_prediction_file",
    "evaluate_predictions",
    "evaluate_segmenter",
    "evaluate_data_dir",
    "format_table",
    "dumps",
    "PREDICTION_KINDS",
]

#: Prediction file endings, in the order they are preferred when several exist:
#: the batch command's own outputs first, so that in a folder holding photos
#: beside their outputs (``a.png``, ``a.png__heatmap.png``) the output is scored,
#: never the photo; a plain ``<stem>.png`` only where no output exists.
PREDICTION_KINDS = ("__mask.png", "__heatmap.png", "__heatmap16.png", "__heatmap.npy", ".png")


@dataclass
class EvalReport:
    """The result of an evaluation.

    Attributes:
        scores: Per-image counts of every image that was scored.
        failures: ``(name, reason)`` of each ground truth that could not be scored.
        skipped: Images that have no ground truth (model mode; not scored).
        info: What was evaluated (folders, weights, threshold...), for the JSON.
        predictions: The prediction file (or image) of each scored name.
        not_plain: How many ground-truth and prediction mask files were not
            plain two-valued masks (anti-aliasing, JPEG noise, colour labels),
            read by the one mask rule all the same.
    """

    scores: SegmentationScores = field(default_factory=SegmentationScores)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    predictions: dict[str, str] = field(default_factory=dict)
    not_plain: dict[str, int] = field(default_factory=lambda: {"ground_truth": 0, "predictions": 0})

    def summary(self) -> dict:
        """The scores, plus ``failures`` and ``mean_iou_failures_as_0`` (every
        ground truth counted, a failed one as IoU 0: what a missing
        prediction costs)."""
        s = self.scores.summary()
        per = [p["iou"] for p in self.scores.per_image()]
        total = len(per) + len(self.failures)
        s["failures"] = len(self.failures)
        s["not_two_valued_ground_truth"] = self.not_plain["ground_truth"]
        s["not_two_valued_predictions"] = self.not_plain["predictions"]
        s["mean_iou_failures_as_0"] = float(sum(per) / total) if total else 0.0
        return s

    def to_json(self) -> dict:
        """Everything, as JSON-ready data."""
        per = self.scores.per_image()
        for row in per:
            if row["name"] in self.predictions:
                row["prediction"] = self.predictions[row["name"]]
        return {
            **self.info,
            "summary": self.summary(),
            "notes": [
                "mean_iou is the seed's rule: per image |P and G| / (|P or G| + 1e-6), averaged; an image with "
                "no face in either the prediction or the ground truth scores 0 there "
                f"({self.scores.summary()['empty_both']} such image(s) here)",
                "dataset_iou is total intersection over total union, over all scored images",
                "mask files are read by one rule on both sides: a palette index != 0, a 0/1 image's 1, else the "
                "brightest colour channel at least half its range (128 of 255); heatmaps above the threshold. "
                "not_two_valued_* count the files that held other values (anti-aliasing, JPEG noise, colour)",
            ],
            "failures": [{"name": n, "reason": r} for n, r in self.failures],
            "skipped_without_ground_truth": list(self.skipped),
            "per_image": per,
        }


def find_masks(folder: Path, recursive: bool) -> dict[str, Path]:
    """Ground-truth masks by key (relative path without extension, ``/``-separated).

    Raises:
        ConfigError: Two masks share a key (``a.png`` and ``a.jpg``).
    """
    from ..errors import ConfigError
    from ..files.imageio import find_images

    files, _ = find_images(folder, recursive=recursive)
    out: dict[str, Path] = {}
    clashes = []
    for p in files:
        key = p.relative_to(folder).with_suffix("").as_posix()
        if key in out:
            clashes.append(f"{out[key].name} and {p.name}")
        out[key] = p
    if clashes:
        raise ConfigError(f"GT_DIR={folder}: several masks with one name: {'; '.join(clashes[:5])}; rename them")
    return out


def _split_prediction_name(rel: Path, image_exts: frozenset[str]) -> tuple[str, str] | None:
    """``(key, kind)`` of a prediction file, or ``None`` if it is not one."""
    name = rel.name
    for kind in ("__mask.png", "__heatmap.png", "__heatmap16.png", "__heatmap.npy"):
        if name.endswith(kind):
            base = name[: -len(kind)]
            # The CLI writes <image file name>__kind next to the image
            # (photo.jpg__mask.png) and <stem>__kind under OUT_DIR.
            if Path(base).suffix.lower() in image_exts:
                base = Path(base).stem
            return (rel.parent / base).as_posix(), kind
    if name.lower().endswith(".png") and "__" not in name:
        return (rel.parent / name[:-4]).as_posix(), ".png"
    return None


def index_predictions(folder: Path, recursive: bool) -> dict[str, list[tuple[int, str, Path]]]:
    """Prediction files by key: ``[(preference rank, kind, path), ...]``, best first."""
    from ..files.imageio import image_extensions

    exts = image_extensions()
    walker = folder.rglob("*") if recursive else folder.iterdir()
    out: dict[str, list[tuple[int, str, Path]]] = {}
    for p in walker:
        if not p.is_file() or p.name.startswith("."):
            continue
        parsed = _split_prediction_name(p.relative_to(folder), exts)
        if parsed is None:
            continue
        key, kind = parsed
        out.setdefault(key, []).append((PREDICTION_KINDS.index(kind), kind, p))
    for v in out.values():
        v.sort(key=lambda t: (t[0], t[2].name))
    return out


def read_prediction(path: Path, kind: str, threshold: float) -> np.ndarray:
    """A prediction file as a boolean mask (:func:`read_prediction_file` without the flag)."""
    return read_prediction_file(path, kind, threshold).mask


def read_prediction_file(path: Path, kind: str, threshold: float) -> MaskFile:
    """A prediction file as a mask, and whether it was a plain two-valued one.

    - ``__heatmap.png`` (8-bit) / ``__heatmap16.png``: probability ``v / 255``
      (``v / 65535``) above ``threshold`` (probabilities: always "plain");
    - ``__heatmap.npy``: float probabilities above ``threshold``;
    - ``__mask.png`` and plain ``<stem>.png``: the package's one mask rule, as
      for ground truth (:mod:`face_segmentation_pytorch.pipeline.masks`).

    Raises:
        ImageReadError: The file cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    from ..errors import ImageReadError
    from ..files.masks import read_mask

    if kind not in ("__heatmap.npy", "__heatmap.png", "__heatmap16.png"):
        return read_mask(path)
    try:
        if kind == "__heatmap.npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 2:
                raise ImageReadError(f"{path}: heatmap of shape {arr.shape}; expected (H, W)")
            return MaskFile(np.asarray(arr, dtype=np.float64) > threshold, True)
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr, full = np.asarray(im).astype(np.float64), 65535.0
            else:
                if im.mode != "L":
                    im = im.convert("L")
                arr, full = np.asarray(im).astype(np.float64), 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot read the prediction ({e})") from None
    return MaskFile(arr / full > threshold, True)


def _read_gt(path: Path) -> MaskFile:
    from ..files.masks import read_mask

    return read_mask(path)


def _refuse_ambiguous(pred_dir: Path, found: dict[str, list[tuple[int, str, Path]]]) -> None:
    """One error when a ground truth has two equally preferred predictions
    (``a.jpg__mask.png`` and ``a.png__mask.png``): which to score is the user's call."""
    from ..errors import ConfigError

    clashes = []
    for key, files in sorted(found.items()):
        best = [f[2].name for f in files if f[0] == files[0][0]]
        if len(best) > 1:
            clashes.append(f"{key}: {', '.join(best)}")
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ConfigError(
            f"PRED_DIR={pred_dir}: several predictions for one ground truth ({'; '.join(clashes[:3])}{more}); "
            "move all but one elsewhere, or give the folder of one run"
        )


def evaluate_predictions(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    threshold: float = 0.5,
    recursive: bool = False,
    progress: bool = False,
) -> EvalReport:
    """Score prediction files against ground-truth masks, matched by stem.

    Every ground truth is looked up in ``pred_dir`` (the same sub-folder with
    ``recursive``) under the names of :data:`PREDICTION_KINDS`, masks before
    heatmaps. A ground truth without a prediction, or whose prediction cannot
    be read or has another size, is a failure.

    Raises:
        ConfigError: A folder is missing or ``gt_dir`` holds no masks.
    """
    from ..errors import ConfigError, ImageReadError
    from ..files.progress import progress_bar

    pred_dir, gt_dir = Path(pred_dir).expanduser(), Path(gt_dir).expanduser()
    for key, folder in (("PRED_DIR", pred_dir), ("GT_DIR", gt_dir)):
        if not folder.is_dir():
            raise ConfigError(f"{key}={folder}: no such folder")
    gts = find_masks(gt_dir, recursive)
    if not gts:
        raise ConfigError(
            f"GT_DIR={gt_dir}: no mask files found" + ("" if recursive else " (RECURSIVE=true looks in sub-folders)")
        )
    preds = index_predictions(pred_dir, recursive)
    _refuse_ambiguous(pred_dir, {k: preds[k] for k in gts if k in preds})
    report = EvalReport(
        info={"mode": "predictions", "pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "threshold": threshold}
    )
    bar = progress_bar(len(gts), desc="scoring", unit="img", enabled=progress)
    try:
        for key, gt_path in sorted(gts.items()):
            bar.update(1)
            found = preds.get(key, [])
            if not found:
                report.failures.append(
                    (
                        key,
                        f"no prediction in {pred_dir} (looked for {Path(key).name}__mask.png, "
                        f"{Path(key).name}.png, {Path(key).name}__heatmap.png and the CLI's other names)",
                    )
                )
                continue
            _, kind, path = found[0]
            try:
                gt_file = _read_gt(gt_path)
                pred_file = read_prediction_file(path, kind, threshold)
            except ImageReadError as e:
                report.failures.append((key, str(e)))
                continue
            report.not_plain["ground_truth"] += not gt_file.plain
            report.not_plain["predictions"] += not pred_file.plain
            gt, pred = gt_file.mask, pred_file.mask
            if pred.shape != gt.shape:
                report.failures.append(
                    (
                        key,
                        f"{path.name} is {pred.shape[1]}x{pred.shape[0]} (WxH), the ground truth "
                        f"{gt.shape[1]}x{gt.shape[0]}",
                    )
                )
                continue
            report.scores.update(pred, gt, [key])
            report.predictions[key] = str(path)
    finally:
        bar.close()
    return report


def evaluate_segmenter(
    segmenter,
    imgs_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    recursive: bool = False,
    batch_size: int = 1,
    progress: bool = False,
) -> EvalReport:
    """Segment every image of ``imgs_dir`` that has a mask in ``gt_dir`` and score it.

    Images are matched to masks by relative path without extension
    (``photos/a.jpg`` <-> ``masks/a.png``). Masks come from the segmenter's
    threshold (and post-processing) at each image's own size, as the CLI
    writes them. Images without a mask are skipped (listed); a mask without
    an image, an unreadable file or a size mismatch is a failure.

    Args:
        segmenter: A :class:`~face_segmentation_pytorch.FaceSegmenter` with a threshold.
        imgs_dir: The images.
        gt_dir: Their ground-truth masks.
        recursive: Also look in sub-folders.
        batch_size: Images per forward pass.
        progress: Progress on stderr.

    Raises:
        ConfigError: A folder is missing or empty, or the segmenter has no threshold.
    """
    from ..errors import ConfigError, ImageReadError
    from ..files.imageio import find_images, load_image
    from ..files.progress import progress_bar

    if segmenter.threshold is None:
        raise ConfigError("the segmenter needs a threshold to make masks (threshold=0.5)")
    imgs_dir, gt_dir = Path(imgs_dir).expanduser(), Path(gt_dir).expanduser()
    for key, folder in (("IMGS_DIR", imgs_dir), ("GT_DIR", gt_dir)):
        if not folder.is_dir():
            raise ConfigError(f"{key}={folder}: no such folder")
    gts = find_masks(gt_dir, recursive)
    if not gts:
        raise ConfigError(f"GT_DIR={gt_dir}: no mask files found")
    images, _ = find_images(imgs_dir, recursive=recursive)
    by_key: dict[str, Path] = {}
    report = EvalReport(info={"mode": "model", "imgs_dir": str(imgs_dir), "gt_dir": str(gt_dir)})
    for p in images:
        key = p.relative_to(imgs_dir).with_suffix("").as_posix()
        if key in by_key:
            report.failures.append((key, f"several images with this name ({by_key[key].name}, {p.name}); rename one"))
            continue
        by_key[key] = p
    report.skipped = sorted(k for k in by_key if k not in gts)
    todo = []
    for key in sorted(gts):
        if key not in by_key:
            report.failures.append((key, f"no image for this ground truth in {imgs_dir}"))
        else:
            todo.append(key)
    bar = progress_bar(len(todo), desc="segmenting", unit="img", enabled=progress)
    try:
        for start in range(0, len(todo), batch_size):
            keys = todo[start : start + batch_size]
            loaded, paths, gtm, ok = [], [], [], []
            for key in keys:
                try:
                    img = load_image(by_key[key])
                    gt_file = _read_gt(gts[key])
                    gt = gt_file.mask
                    report.not_plain["ground_truth"] += not gt_file.plain
                except ImageReadError as e:
                    report.failures.append((key, str(e)))
                    bar.update(1)
                    continue
                if gt.shape != (img.height, img.width):
                    report.failures.append(
                        (
                            key,
                            f"{by_key[key].name} is {img.width}x{img.height} (WxH), the ground "
                            f"truth {gt.shape[1]}x{gt.shape[0]}",
                        )
                    )
                    bar.update(1)
                    continue
                loaded.append(img)
                paths.append(by_key[key])
                gtm.append(gt)
                ok.append(key)
            if not ok:
                continue
            for key, seg, gt in zip(ok, segmenter.segment_loaded(loaded, paths), gtm):
                report.scores.update(seg.mask, gt, [key])
                report.predictions[key] = str(by_key[key])
                bar.update(1)
    finally:
        bar.close()
    return report


def evaluate_data_dir(
    segmenter,
    data_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int = 1,
    check: str = "header",
    progress: bool = False,
) -> EvalReport:
    """Segment and score the validation part of a training data folder.

    The part the trainer validates on: the data's own (the seed's
    ``img_test.npy`` / ``mask_test.npy`` or ``img_val.npy``, or ``val/``), else,
    with ``val_fraction > 0``, the trainer's seeded split of that share (the
    same ``seed`` gives the same images as ``train VAL_FRACTION=... SEED=...``). With the NumPy arrays (256x256) and a LinkNet34 entry this is
    the seed's test protocol: each image at its own size, ``logit > 0``, the
    per-image IoU averaged (the seed dropped a last incomplete batch; every
    image counts here).

    Raises:
        ConfigError: No such folder, or it has no validation part of its own.
        DataError: The data has problems (all listed).
    """
    from ..errors import ConfigError
    from ..files.progress import progress_bar
    from .data import discover

    if segmenter.threshold is None:
        raise ConfigError("the segmenter needs a threshold to make masks (threshold=0.5)")
    data = discover(data_dir, val_fraction=val_fraction, seed=seed, check=check, progress=progress)
    if data.val is None:
        raise ConfigError(
            f"DATA_DIR={data_dir}: no validation part of its own (img_test.npy / img_val.npy, or val/); "
            "give VAL_FRACTION=... SEED=... as the training run had them (or RUN_DIR=<the run>)"
        )
    source = data.val
    report = EvalReport(info={"mode": "data_dir", "data_dir": str(data_dir), "part": data.val_origin})
    bar = progress_bar(len(source), desc="segmenting", unit="img", enabled=progress)
    try:
        for start in range(0, len(source), batch_size):
            idx = range(start, min(start + batch_size, len(source)))
            pairs = [source.load(i) for i in idx]
            segs = segmenter.segment_loaded([img for img, _ in pairs])
            for i, seg, (_, gt) in zip(idx, segs, pairs):
                report.scores.update(seg.mask, gt, [source.name(i)])
            bar.update(len(idx))
    finally:
        bar.close()
    return report


def format_table(report: EvalReport, worst: int = 10) -> str:
    """The summary as a small text table, then the ``worst`` images and the failures."""
    s = report.summary()
    lines = [
        f"{'images scored':<16}{s['images']}",
        f"{'mean_iou':<16}{s['mean_iou']:.4f}   per image, the seed's rule ({s['empty_both']} image(s) with no face "
        "in either mask score 0)",
        f"{'dataset_iou':<16}{s['dataset_iou']:.4f}   total intersection / total union",
        f"{'f1':<16}{s['f1']:.4f}",
        f"{'pixel_accuracy':<16}{s['pixel_accuracy']:.4f}",
        f"{'not two-valued':<16}{s['not_two_valued_ground_truth']} ground truth, "
        f"{s['not_two_valued_predictions']} prediction mask file(s) (read by the one rule: brightest colour "
        "channel >= half its range)",
        f"{'failures':<16}{s['failures']}"
        + (f"   (mean_iou counting them as 0: {s['mean_iou_failures_as_0']:.4f})" if s["failures"] else ""),
    ]
    per = sorted(report.scores.per_image(), key=lambda r: (r["iou"], r["name"]))[:worst]
    if per:
        width = max(len("image"), *(len(r["name"]) for r in per))
        lines += ["", f"lowest IoU ({len(per)} of {s['images']}):", f"  {'image':<{width}}  iou"]
        lines += [f"  {r['name']:<{width}}  {r['iou']:.4f}" for r in per]
    if report.failures:
        lines += ["", "failures:"] + [f"  {n}: {r}" for n, r in report.failures]
    return "\n".join(lines)


def dumps(report: EvalReport) -> str:
    """The report as indented JSON text."""
    return json.dumps(report.to_json(), indent=1) + "\n"
