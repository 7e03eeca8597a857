"""From images to face probability maps at the images' own size."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..models.fcn8s import FaceSegmentationNet
from .preprocess import image_to_input, resize_pmap

__all__ = ["predict_pmaps", "run_inputs", "start_inputs", "PendingMaps", "pmap_to_uint8", "pmap_to_mask"]

_DEFAULT = "default"


class PendingMaps:
    """Maps whose computation has been launched; :meth:`result` waits for them.

    On CUDA the forward passes, the resize back and the copy to the host are
    queued on the device and this object holds the event that marks their
    end, so the caller can prepare the next batch (or launch it) while this
    one computes. On the CPU everything has run by the time it exists.
    """

    def __init__(self, host: torch.Tensor, pieces: list[tuple[int, tuple[int, int]]], event=None) -> None:
        self._host, self._pieces, self._event = host, pieces, event

    @property
    def asynchronous(self) -> bool:
        """Whether the work may still be running (CUDA); on the CPU it is done."""
        return self._event is not None

    def result(self) -> list[torch.Tensor]:
        """One ``(H, W)`` CPU tensor per input (views of one host buffer): float32
        probabilities, or boolean masks when a threshold was given."""
        if self._event is not None:
            self._event.synchronize()
        return [self._host[o : o + h * w].view(h, w) for o, (h, w) in self._pieces]


@torch.inference_mode()
def start_inputs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    sizes: Sequence[tuple[int, int]],
    valid: Sequence[tuple[int, int] | None] | None = None,
    *,
    to_batch: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
    multiple: int = 1,
    threshold: float | None = None,
) -> PendingMaps:
    """Launch :func:`run_inputs`' work and return without waiting for it.

    With ``threshold`` the maps are compared with it on the device and come
    back as boolean masks (a quarter of the bytes): the same comparison of the
    same float32 values as on the host, so the same masks.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        *lead, h, w = x.shape
        # Inputs that pad to the same shape run as one batch.
        groups.setdefault((*lead, h + -h % multiple, w + -w % multiple), []).append(i)
    stack = to_batch or torch.stack
    resized: list[torch.Tensor | None] = [None] * len(inputs)
    for idx in groups.values():
        pmaps = _forward_splitting(forward, stack([inputs[i] for i in idx]))
        # Maps bound for the same size (and crop) are resized as one batch on
        # the forward's device.
        same: dict[tuple, list[int]] = {}
        for j, i in enumerate(idx):
            crop = valid[i] if valid is not None else None
            same.setdefault((tuple(sizes[i]), crop), []).append(j)
        for (size, crop), js in same.items():
            maps = pmaps[js]
            if crop is not None:
                maps = maps[:, : crop[0], : crop[1]]
            out = resize_pmap(maps, size)
            for k, j in enumerate(js):
                resized[idx[j]] = out[k]
    if threshold is not None:
        resized = [m > threshold for m in resized]
    # One copy to the host for the whole batch: every map, flattened, in one
    # buffer (pinned on CUDA, so the copy is asynchronous).
    flat = torch.cat([m.reshape(-1) for m in resized]) if resized else torch.zeros(0)
    pieces, offset = [], 0
    for m in resized:
        pieces.append((offset, (int(m.shape[0]), int(m.shape[1]))))
        offset += m.numel()
    if flat.device.type == "cuda":
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        with torch.cuda.device(flat.device):  # the copy's device and stream, not cuda:0's
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(flat.device))
        return PendingMaps(host, pieces, event)
    return PendingMaps(flat.cpu(), pieces)


def run_inputs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    sizes: Sequence[tuple[int, int]],
    valid: Sequence[tuple[int, int] | None] | None = None,
    *,
    to_batch: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
    multiple: int = 1,
) -> list[torch.Tensor]:
    """Run prepared ``(3, h, w)`` inputs and bring each map to its ``sizes`` entry.

    Inputs that share a shape (after padding to ``multiple``) run as one
    batch: ``to_batch`` turns their list into the batch ``forward`` takes
    (default: ``torch.stack``; the segmenter's copies uint8 inputs to the
    device, normalises and pads them there), and ``forward`` maps that batch
    to ``(N, h, w)`` face probabilities (the network on its device, or
    another backend). Where ``valid`` gives an ``(h, w)`` for an input, its
    map is cropped to that top-left part (the rest was padding) before
    resizing. The maps of all inputs come to the host in one copy.

    Returns:
        One float32 ``(H, W)`` CPU tensor in ``[0, 1]`` per input.
    """
    return start_inputs(forward, inputs, sizes, valid, to_batch=to_batch, multiple=multiple).result()


def _is_out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom)


def _forward_splitting(forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """``forward(batch).float()``; a batch that does not fit in GPU memory is split
    in halves and retried (one line says so), down to single images."""
    try:
        return forward(batch).float()
    except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
        if not _is_out_of_memory(e) or batch.shape[0] == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = batch.shape[0] // 2
    print(
        f"face_segmentation_pytorch: a batch of {batch.shape[0]} did not fit in GPU memory; "
        f"running it as {half} + {batch.shape[0] - half}",
        file=sys.stderr,
    )
    return torch.cat([_forward_splitting(forward, batch[:half]), _forward_splitting(forward, batch[half:])])


def predict_pmaps(
    model: FaceSegmentationNet,
    images: Sequence,
    *,
    input_size: int | tuple[int, int] | None | str = _DEFAULT,
    face_channel: int | None | str = _DEFAULT,
    pre_normalize: bool = False,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Face probability maps for a batch of RGB images, each at its own size.

    The pipeline of the authors' tool: resize to the network's input size
    (bicubic), subtract the BGR mean, run, collapse the scores to a face
    probability, and bring the map back to the image's size bilinearly.
    Images that share an input shape run as one batch; at native size
    (``input_size=None``) images of different sizes run in separate groups.

    Args:
        model: A network in eval mode with weights loaded.
        images: PIL images or ``(H, W, 3)`` uint8 RGB arrays.
        input_size: Side (or ``(height, width)``) to resize to; the default
            is ``model.input_size``; ``None`` runs at native size.
        face_channel: Face rule for :func:`scores_to_pmap`; default: the model's.
        pre_normalize: Contrast-stretch each image first (not in the original tool).
        device: Where to run; default: where the model's parameters are.

    Returns:
        One float32 ``(H, W)`` CPU tensor in ``[0, 1]`` per image.
    """
    if input_size == _DEFAULT:
        input_size = model.input_size
    inputs = [
        image_to_input(img, size=input_size, mean_bgr=model.mean_bgr, pre_normalize=pre_normalize) for img in images
    ]
    sizes = [(img.shape[0], img.shape[1]) if isinstance(img, np.ndarray) else (img.height, img.width) for img in images]
    if device is None:
        device = model.conv1_1.weight.device
    return run_inputs(lambda batch: model(batch.to(device), as_pmap=True, face_channel=face_channel), inputs, sizes)


def pmap_to_uint8(pmap: torch.Tensor) -> np.ndarray:
    """Probability map to an 8-bit heatmap (0 -> 0, 1 -> 255, rounded), as the CLI writes it."""
    from .render import heatmap_to_png_array

    return heatmap_to_png_array(pmap.detach().cpu().numpy(), 8)


def pmap_to_mask(pmap: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Probability map to a 0/255 uint8 mask of the pixels above ``threshold``."""
    return ((pmap > threshold).to(torch.uint8) * 255).numpy()
