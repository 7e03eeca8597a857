"""High-level API: images in, face probability maps and masks out.

The command line runs through :class:`FaceSegmenter` too, so the two cannot
drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .imageio import load_image
from .inference import predict_pmaps
from .model import FaceSegmentationNet
from .postprocess import apply_steps, parse_steps
from .weights import DEFAULT_WEIGHTS, Weights, find_or_download_state_dict, weights_for

__all__ = ["FaceSegmenter", "Segmentation", "resolve_device"]

_AUTO = "auto"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available; asking for absent CUDA raises ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device} asked for CUDA, but this torch ({torch.__version__}) sees no CUDA "
            "device; use cpu, or install a CUDA build of torch (requirements-gpu.txt)"
        )
    return device


@dataclass
class Segmentation:
    """The result for one image.

    Attributes:
        pmap: ``(H, W)`` float32 face probability at the image's size.
        mask: ``(H, W)`` boolean mask after thresholding and post-processing,
            or ``None`` when the segmenter has no threshold.
        image: The RGB image that was segmented (for overlays).
        path: Where the image came from, when it was given as a path.
    """

    pmap: np.ndarray
    mask: np.ndarray | None
    image: Image.Image = field(repr=False)
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.pmap.shape[0], self.pmap.shape[1]


class FaceSegmenter:
    """Find, load and run the network; threshold and post-process its output.

    Args:
        model: A :data:`~face_segmentation_pytorch.weights.WEIGHTS` name
            (``"fcn8s_500"``, ``"fcn8s_300_no_aug"``, ``"fcn8s_500_port"``) or a
            :class:`FaceSegmentationNet` with weights loaded.
        params_dir: Folder with (or for) the weights; ``None`` uses the cache folder.
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
        input_size: ``"auto"`` resizes to the weights' input size as the
            original tool does; an int or ``(h, w)`` another size; ``None``
            runs at native size.
        threshold: Face probability above which a pixel is in the mask;
            ``None`` gives probability maps only.
        postprocess: Steps applied to masks, by name (``"largest"``,
            ``"fill_holes"``, ``"smooth"``, ``"full"``), as a list or a
            comma-separated string.
        face_channel: ``None`` (best non-background channel) or a channel
            index compared with background (15: the authors' C++ tool).
        pre_normalize: Contrast-stretch images first (the original tool does not).
        url, sha256: Override the weights' download source and hash.
        progress: Show a progress bar while downloading weights.
    """

    def __init__(
        self,
        model: str | Weights | FaceSegmentationNet = DEFAULT_WEIGHTS,
        *,
        params_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        input_size: int | tuple[int, int] | str | None = _AUTO,
        threshold: float | None = 0.5,
        postprocess: str | Sequence[str] | None = None,
        face_channel: int | None = None,
        pre_normalize: bool = False,
        url: str | None = None,
        sha256: str | None = None,
        progress: bool = True,
    ) -> None:
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
        self.steps = parse_steps(postprocess)
        if self.steps and threshold is None:
            raise ValueError("post-processing works on masks: give a threshold (e.g. 0.5)")
        self.device = resolve_device(device)
        if isinstance(model, FaceSegmentationNet):
            net, self.weights_source = model, None
        else:
            state, self.weights_source = find_or_download_state_dict(
                params_dir, weights=model, url=url, sha256=sha256, progress=progress
            )
            entry = weights_for(state, model)
            net = FaceSegmentationNet.from_state_dict(
                state, input_size=entry.input_size, mean_bgr=entry.mean_bgr
            )
        if face_channel is not None and not 1 <= face_channel < net.num_classes:
            raise ValueError(
                f"face_channel={face_channel} does not exist: the weights have "
                f"{net.num_classes} channels (use 1..{net.num_classes - 1}, or None)"
            )
        self.model = net.to(self.device).eval()
        self.input_size = net.input_size if input_size == _AUTO else input_size
        self.threshold = threshold
        self.face_channel = face_channel
        self.pre_normalize = pre_normalize

    def segment(self, images):
        """Segment one image or a list of them.

        Args:
            images: A path, PIL image or ``(H, W, 3)`` uint8 RGB array, or a
                list of those. Paths are read with EXIF orientation applied.

        Returns:
            A :class:`Segmentation`, or a list of them for a list input.
        """
        single = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray))
        items = [images] if single else list(images)
        paths = [Path(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
        pics = [load_image(x) if p is not None else x for x, p in zip(items, paths)]
        results = self.segment_loaded(pics, paths)
        return results[0] if single else results

    def segment_loaded(
        self, images: Sequence[Image.Image | np.ndarray], paths: Sequence[Path | None] | None = None
    ) -> list[Segmentation]:
        """Segment images already in memory as one batch (grouped by input shape)."""
        pmaps = predict_pmaps(
            self.model,
            images,
            input_size=self.input_size,
            face_channel=self.face_channel,
            pre_normalize=self.pre_normalize,
            device=self.device,
        )
        out = []
        for i, (img, pmap) in enumerate(zip(images, pmaps)):
            p = pmap.numpy()
            mask = None
            if self.threshold is not None:
                mask = apply_steps(p > self.threshold, self.steps)
            pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
            out.append(Segmentation(p, mask, pil, paths[i] if paths else None))
        return out
