"""High-level API: images in, face probability maps and masks out.

The command line runs through :class:`FaceSegmenter` too, so the two cannot
drift apart.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..files.imageio import as_rgb_image, load_image
from ..weights.families import Preprocessing, family_of_model
from ..weights.registry import (
    DEFAULT_WEIGHTS,
    Weights,
    find_or_download_state_dict,
    get_weights,
    load_state_dict_file,
    weights_for,
)
from .backends import (
    BACKEND_NAMES,
    BACKENDS,
    CPU_ONLY_BACKENDS,
    backend_precisions,
    onnx_file,
    onnxruntime_forward,
    openvino_forward,
    require_runtime,
)
from .crop import DEFAULT_MIN_FACE_SCORE, Face, FaceDetector
from .inference import PendingMaps, start_inputs
from .postprocess import apply_steps, check_px, parse_steps
from .postprocess import dilate as grow_mask
from .postprocess import feather as feather_mask
from .precision import check_precision, precision_dtype, precision_scope
from .preprocess import normalize_inputs, prepare_uint8

__all__ = ["FaceSegmenter", "Prepared", "Preparer", "Assembler", "Segmentation", "resolve_device"]

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


def _setting(part: str, name: str, doc: str) -> property:
    """A property of :class:`FaceSegmenter` that reads and writes ``self.<part>.<name>``."""

    def get(self):
        return getattr(getattr(self, part), name)

    def set_(self, value) -> None:
        setattr(getattr(self, part), name, value)

    return property(get, set_, doc=doc)


@dataclass
class Segmentation:
    """The result for one image.

    Attributes:
        pmap: ``(H, W)`` float32 face probability at the image's size (``None``
            where only masks were brought back from the device: the batch
            command's mask outputs).
        mask: ``(H, W)`` boolean mask after thresholding and post-processing,
            or ``None`` when the segmenter has no threshold.
        image: The RGB image that was segmented (for overlays).
        path: Where the image came from, when it was given as a path.
        faces: With cropping, the faces (boxes, scores, landmarks).
        face_masks: With cropping and a threshold, each face's mask (its
            crop box's size, or the full image's once dilated past the box).
        alpha: With ``feather``, the final mask's soft edge: float32 in
            ``[0, 1]``, 0.5 on the mask's edge (:func:`.postprocess.feather`).
        feather: The feather radius in pixels the alpha was made with (0: none).
    """

    pmap: np.ndarray | None
    mask: np.ndarray | None
    image: Image.Image = field(repr=False)
    path: Path | None = None
    faces: list[Face] | None = None
    face_masks: list[np.ndarray] | None = field(default=None, repr=False)
    alpha: np.ndarray | None = field(default=None, repr=False)
    feather: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        m = self.pmap if self.pmap is not None else self.mask
        return m.shape[0], m.shape[1]

    def face_mask(self, k: int) -> np.ndarray:
        """Full-size boolean mask of face ``k`` alone (crop mode with a threshold)."""
        if self.faces is None or self.face_masks is None:
            raise ValueError("per-face masks exist only when cropping faces with a threshold")
        m = self.face_masks[k]
        if m.shape == self.size:  # dilated in the full image's pixels
            return m
        x, y, w, h = self.faces[k].box
        full = np.zeros(self.size, bool)
        full[y : y + h, x : x + w] = m
        return full

    def face_alpha(self, k: int) -> np.ndarray:
        """Face ``k``'s mask feathered like :attr:`alpha` (the mask as 0/1 without ``feather``)."""
        return feather_mask(self.face_mask(k), self.feather)


@dataclass
class Prepared:
    """An image made ready for the network by :meth:`FaceSegmenter.prepare`.

    Attributes:
        image: The RGB image (``None`` once a worker process has sent it on
            without it: the writer reads it again only where an output needs it).
        path: Where it came from, if known.
        inputs: ``(3, h, w)`` uint8 network inputs, resized and in the
            network's channel order (:func:`.preprocess.prepare_uint8`): the
            whole image, or one per face. The mean, scaling and padding are
            applied on the network's device, per batch.
        sizes: ``(height, width)`` each input's map is brought back to.
        faces: ``None`` for a whole-image run, else the faces (possibly none).
        valid: Per input, the ``(h, w)`` of its map that is not padding
            (``None``: all of it).
        image_size: ``(height, width)`` of the image.
    """

    image: Image.Image | None = field(repr=False)
    path: Path | None
    inputs: list[torch.Tensor] = field(repr=False)
    sizes: list[tuple[int, int]]
    faces: list[Face] | None
    valid: list[tuple[int, int] | None] | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.image_size is None and self.image is not None:
            self.image_size = (self.image.height, self.image.width)


@dataclass
class Preparer:
    """Everything before the network for one image: face detection or given
    boxes, crops, resizing, channel order (:meth:`prepare`).

    It holds no network, so it can be pickled into worker processes; it is
    thread-safe (each thread builds its own detector, as OpenCV DNN nets are
    not to be shared between threads).

    Attributes:
        preprocessing: The weights entry's :class:`~.families.Preprocessing`.
        input_size: Side or ``(h, w)`` to resize to; ``None``: native size.
        size_multiple: Input sides the network needs multiples of (native size
            is padded to them on the device).
        crop: ``None``, ``"faces"`` (a detector per thread) or a
            :class:`FaceDetector` object (shared behind a lock; not for processes).
        min_face_score: Detector cut-off for ``crop="faces"``.
    """

    preprocessing: Preprocessing
    input_size: int | tuple[int, int] | None
    size_multiple: int = 1
    crop: str | FaceDetector | None = None
    min_face_score: float = DEFAULT_MIN_FACE_SCORE

    def __post_init__(self) -> None:
        if self.crop not in (None, "faces") and not isinstance(self.crop, FaceDetector):
            raise ValueError(f"crop must be None, 'faces' or a FaceDetector, got {self.crop!r}")
        self._local = threading.local()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        if isinstance(self.crop, FaceDetector):
            raise ValueError(
                "a FaceDetector object cannot be sent to worker processes; use crop='faces' "
                "(each process builds its own) or the thread pipeline"
            )
        state = dict(self.__dict__)
        del state["_local"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.Lock()

    def detector(self) -> FaceDetector | None:
        """This thread's detector (``None`` without cropping)."""
        if self.crop is None:
            return None
        if isinstance(self.crop, FaceDetector):
            return self.crop
        det = getattr(self._local, "detector", None)
        if det is None:
            det = self._local.detector = FaceDetector(min_score=self.min_face_score)
        return det

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        if isinstance(self.crop, FaceDetector):  # a detector object given by the caller
            with self._lock:
                return self.crop.detect(rgb)
        return self.detector().detect(rgb)

    def _input(self, img) -> torch.Tensor:
        return prepare_uint8(img, self.preprocessing, size=self.input_size)

    def _valid(self, img_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The unpadded part of an input's map, for an image (or crop) of ``img_hw``."""
        if self.input_size is not None or self.size_multiple == 1:
            return None
        return img_hw

    def prepare(
        self,
        image: Image.Image | np.ndarray,
        path: Path | None = None,
        boxes: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> Prepared:
        """See :meth:`FaceSegmenter.prepare`."""
        # One conversion for every path (whole image, boxes, detected faces),
        # so an L, RGBA or 16-bit image is cropped as its RGB version.
        pil = as_rgb_image(image)
        if self.crop is None and boxes is None:
            hw = (pil.height, pil.width)
            return Prepared(pil, path, [self._input(pil)], [hw], None, [self._valid(hw)])
        rgb = np.asarray(pil)
        if boxes is not None:
            faces = [Face(_clip_box(b, rgb.shape[1], rgb.shape[0])) for b in boxes]
            faces = [f for f in faces if f.box[2] > 0 and f.box[3] > 0]
        else:  # no boxes, so there is a detector (see the return above)
            faces = self._detect(rgb)
        inputs = [self._input(rgb[y : y + h, x : x + w]) for x, y, w, h in (f.box for f in faces)]
        sizes = [(f.box[3], f.box[2]) for f in faces]
        return Prepared(pil, path, inputs, sizes, faces, [self._valid(hw) for hw in sizes])


@dataclass
class Assembler:
    """Everything after the network for one image: thresholding, post-processing,
    dilation, feathering and, with cropping, pasting the faces back (:meth:`assemble`).

    Holds no network, so it can be pickled into worker processes.
    """

    threshold: float | None
    steps: list = field(default_factory=list)
    dilate: int = 0
    feather: int = 0

    def _above(self, m: np.ndarray) -> np.ndarray:
        # Boolean maps were thresholded on the device already (FaceSegmenter.start).
        return m if m.dtype == np.bool_ else m > self.threshold

    def assemble(self, p: Prepared, maps: Sequence[np.ndarray]) -> Segmentation:
        """The :class:`Segmentation` of prepared image ``p`` from its inputs' maps.

        ``maps`` are float32 probabilities, or boolean masks already
        thresholded on the device (``FaceSegmenter.start(masks_only=True)``):
        the result then has masks only (``pmap`` is ``None``).

        With cropping, each face is thresholded and post-processed on its own
        (so ``largest`` keeps one region per face), and the results are pasted
        into full-size maps: the probability is the maximum over faces and 0
        elsewhere, the mask the union.
        """
        maps = list(maps)
        masks_only = bool(maps) and maps[0].dtype == np.bool_
        if masks_only and self.threshold is None:
            raise ValueError("boolean maps need an assembler with a threshold")
        maps = iter(maps)
        if p.faces is None:
            pmap = next(maps)
            mask = None
            if self.threshold is not None:
                mask = apply_steps(self._above(pmap), self.steps)
                if self.dilate:  # after the steps, in the image's own pixels
                    mask = grow_mask(mask, self.dilate)
            return Segmentation(
                None if masks_only else pmap, mask, p.image, p.path, alpha=self._alpha(mask), feather=self.feather
            )
        full = np.zeros(p.image_size, np.float32)
        union = None if self.threshold is None else np.zeros(full.shape, bool)
        face_masks = None if self.threshold is None else []
        for face in p.faces:
            x, y, w, h = face.box
            pmap = next(maps)
            if not masks_only:
                region = full[y : y + h, x : x + w]
                np.maximum(region, pmap, out=region)
            if union is not None:
                m = apply_steps(self._above(pmap), self.steps)
                if self.dilate:
                    # Grown in the full image's pixels, so it may pass its crop box.
                    whole = np.zeros(full.shape, bool)
                    whole[y : y + h, x : x + w] = m
                    m = grow_mask(whole, self.dilate)
                    union |= m
                else:
                    union[y : y + h, x : x + w] |= m
                face_masks.append(m)
        return Segmentation(
            None if masks_only else full,
            union,
            p.image,
            p.path,
            p.faces,
            face_masks,
            alpha=self._alpha(union),
            feather=self.feather,
        )

    def _alpha(self, mask: np.ndarray | None) -> np.ndarray | None:
        # Feathered once on the joined mask, so touching faces get no seam.
        return feather_mask(mask, self.feather) if self.feather and mask is not None else None


class FaceSegmenter:
    """Find, load and run the network; threshold and post-process its output.

    Args:
        model: A :data:`~face_segmentation_pytorch.WEIGHTS` name
            (``"fcn8s_500"``, ``"fcn8s_300_no_aug"``, ``"fcn8s_500_port"``,
            ``"linknet34_oneflow"``, ``"linknet34_oneflow_demo"``) or a
            :class:`FaceSegmentationNet` / :class:`LinkNet34` with weights loaded
            (never changed: it is copied before anything converts it, so a
            ``precision="bf16"`` segmenter leaves the caller's float32 weights
            as they were). The entry carries the family, its preprocessing and how its output
            becomes a face probability.
        params_dir: Folder with (or for) the weights; ``None`` uses the cache folder.
        weights_file: Load the weights from this file (``.pt``, ``.safetensors``,
            ``.caffemodel``, a OneFlow folder or zip) instead of looking in
            ``params_dir``; the entry still says how to run them (e.g. a
            fine-tuned ``best.pt`` with ``"linknet34_oneflow"``).
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
        input_size: ``"auto"`` resizes to the weights' input size as the
            original tools do; an int or ``(h, w)`` another size (LinkNet34:
            multiples of 32); ``None`` runs at native size (LinkNet34: padded
            to multiples of 32, the padding cropped off the result).
        threshold: Face probability above which a pixel is in the mask;
            ``None`` gives probability maps only.
        postprocess: Steps applied to masks, by name (``"largest"``,
            ``"fill_holes"``, ``"smooth"``, ``"full"``), as a list or a
            comma-separated string.
        face_channel: FCN-8s only: ``None`` (best non-background channel) or a
            channel index compared with background (15: the authors' C++ tool).
        pre_normalize: Contrast-stretch images first (the original tool does not).
        crop: ``None`` segments whole images; ``"faces"`` detects faces (the
            ``[crop]`` extra), segments each face's crop box and pastes the
            results back at full size; a :class:`FaceDetector` to use instead.
        min_face_score: Detector confidence cut-off for ``crop="faces"``.
        channels_last: Run in channels-last memory layout; ``None``: yes,
            where it is measured fastest (CPU and CUDA).
        backend: ``"torch"``; ``"onnxruntime"`` (CPU, fp32; the ``[onnx]``
            extra) or ``"openvino"`` (CPU, fp32 or bf16; the ``[openvino]``
            extra): the network is exported once to ``<weights file>.onnx``
            beside the weights and run by that runtime (:mod:`.backends`).
        url, sha256: Override the weights' download source and hash.
        dilate: Grow (or, negative, shrink) each mask by this many pixels after
            the post-processing steps, in the full image's pixels (with
            cropping, each face's mask on its own, so it may pass its box).
        feather: Soften the final mask's edge over this many pixels into
            :attr:`Segmentation.alpha` (0.5 on the edge).
        precision: ``"fp32"`` (default: exact, TF32 off on CUDA in a scoped
            setting), ``"tf32"`` (CUDA), ``"fp16"`` (CUDA), ``"bf16"`` (CUDA, or
            CPUs with native bfloat16); see :mod:`.precision`.
        compile: Run the network through ``torch.compile`` (mode per family
            and device); short batches are padded so one shape compiles once;
            where compilation fails, one line says so and the network runs as is.
        progress: Show download progress and say when a one-off ONNX export runs.
    """

    def __init__(
        self,
        model: str | Weights | nn.Module = DEFAULT_WEIGHTS,
        *,
        params_dir: str | os.PathLike | None = None,
        weights_file: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        input_size: int | tuple[int, int] | str | None = _AUTO,
        threshold: float | None = 0.5,
        postprocess: str | Sequence[str] | None = None,
        face_channel: int | None = None,
        pre_normalize: bool = False,
        crop: str | FaceDetector | None = None,
        min_face_score: float = DEFAULT_MIN_FACE_SCORE,
        channels_last: bool | None = None,
        backend: str = "torch",
        url: str | None = None,
        sha256: str | None = None,
        dilate: int = 0,
        feather: int = 0,
        precision: str = "fp32",
        compile: bool = False,
        progress: bool = True,
    ) -> None:
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
        steps = parse_steps(postprocess)
        if steps and threshold is None:
            raise ValueError("post-processing works on masks: give a threshold (e.g. 0.5)")
        dilate = check_px(dilate, "dilate")
        feather = check_px(feather, "feather", allow_negative=False)
        if (dilate or feather) and threshold is None:
            raise ValueError("dilate and feather work on masks: give a threshold (e.g. 0.5)")
        #: After the network: thresholding, post-processing, dilation, feathering.
        #: It holds no weights, so a pipeline may run it in worker threads or
        #: processes; ``threshold``, ``steps``, ``dilate`` and ``feather`` are its.
        self.assembler = Assembler(threshold, steps, dilate, feather)
        # ONNX Runtime and OpenVINO run on the CPU here: unless a device is named,
        # they pick the CPU themselves instead of the CUDA device torch would default to.
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.device = resolve_device("cpu" if backend in CPU_ONLY_BACKENDS and device is None else device)
        if backend in CPU_ONLY_BACKENDS and self.device.type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU here: use device='cpu'")
        if compile and backend != "torch":
            raise ValueError(f"compile applies to the torch backend; {backend} compiles the graph itself")
        if precision not in backend_precisions(backend):
            raise ValueError(
                f"precision {precision} with backend {backend}: {BACKEND_NAMES[backend]} runs "
                f"{' or '.join(backend_precisions(backend))} here; use BACKEND=torch for {precision}"
            )
        check_precision(precision, self.device)
        self.precision = precision
        if crop not in (None, "faces") and not isinstance(crop, FaceDetector):
            raise ValueError(f"crop must be None, 'faces' or a FaceDetector, got {crop!r}")
        # Built here so a missing [crop] extra fails early; other threads build their own.
        first_detector = FaceDetector(min_score=min_face_score) if crop == "faces" else None
        if isinstance(model, nn.Module):
            if weights_file is not None:
                raise ValueError("weights_file applies to a weights entry name, not to a model object")
            # The caller's object stays theirs: eval mode, BatchNorm folding, the
            # layout and the precision's dtype all apply to a copy (converting it
            # in place would round their float32 weights to bfloat16 for good).
            net, self.weights_source = copy.deepcopy(model), None
            self.family = family_of_model(net)
            self.entry = None
            self.preprocessing = self.family.preprocessing_of(net)
        else:
            self.entry = get_weights(model)
            if weights_file is not None:
                # Your own weights (e.g. a training run's best.pt) with this
                # entry's architecture, preprocessing and output rule.
                state = load_state_dict_file(weights_file, self.entry.family)
                self.weights_source = Path(weights_file)
            else:
                state, self.weights_source = find_or_download_state_dict(
                    params_dir, weights=model, url=url, sha256=sha256, progress=progress
                )
            if weights_file is None:
                self.entry = weights_for(state, self.entry)
            self.family = self.entry.arch
            self.preprocessing = self.entry.preprocessing
            net = self.family.build(state, self.preprocessing)
            del state  # the model holds the tensors now; no second reference
        self.family.check_face_channel(net, face_channel)
        input_size = self.preprocessing.input_size if input_size == _AUTO else input_size
        m = self.family.size_multiple
        if input_size is not None and any(v % m for v in _pair(input_size)):
            raise ValueError(
                f"input_size={input_size}: {self.family.name} needs sides that are multiples of {m}; "
                f"use {self.preprocessing.input_size}, another multiple of {m}, or None (native size, padded)"
            )
        self.face_channel = face_channel
        self.pre_normalize = pre_normalize
        #: Before the network: detection, crops, resizing (``input_size`` is its).
        #: No weights either, so it runs in worker threads or processes too.
        self.preparer = Preparer(self.preprocessing, input_size, m, crop, min_face_score)
        if first_detector is not None:
            self.preparer._local.detector = first_detector
        self.backend = backend
        self.progress = progress
        if backend in CPU_ONLY_BACKENDS:
            net = net.eval()
            require_runtime(backend)
            #: The ONNX graph the backend runs (``<weights file>.onnx``).
            self.onnx_path = onnx_file(net, self.weights_source, progress=progress)
            if backend == "onnxruntime":
                self._forward = onnxruntime_forward(self.onnx_path, self.family, face_channel)
            else:
                self._forward = openvino_forward(self.onnx_path, self.family, face_channel, precision)
            self.model = net  # kept for its attributes; the runtime runs the graph
            #: The runtime and precision that run the network, in words (the commands print it).
            self.runtime = self._forward.runtime
            return
        self.dtype = precision_dtype(precision)
        # The fast path is chosen (LinkNet34: BatchNorm folded, in float64) while the
        # weights still have their own dtype, so bfloat16 rounds them once, not twice.
        net = self.family.prepare_for_device(net.eval(), self.device)
        self.model = net.to(self.device, self.dtype)
        if channels_last is None or channels_last:
            # The fastest layout measured on both devices: on the CPU for the
            # exact fp32 path (benchmarks/bench.py), on CUDA with cuDNN for
            # every precision (README "GPU"); the oracle tests check it.
            self.model = self.family.to_channels_last(self.model)
        self._forward = self._torch_forward
        self.runtime = f"PyTorch {torch.__version__.split('+')[0]}, {precision}"
        self._compiled = None
        if compile:
            self._compile()

    def _torch_forward(self, batch: torch.Tensor) -> torch.Tensor:
        model = self._compiled if self._compiled is not None else self.model
        n = batch.shape[0]
        if self._compiled is not None and n < self._compile_batch:
            # One shape compiles once: pad a short (last) batch to the first batch's size.
            batch = torch.cat([batch, batch.new_zeros((self._compile_batch - n, *batch.shape[1:]))])
        elif self._compiled is not None:
            self._compile_batch = n
        x = batch.to(self.device, self.dtype, non_blocking=True)
        if model is not self.model and self._cuda_graphs:
            # Each call is a new step: the previous call's graph outputs may be
            # reused (its probabilities are already copies: logits_to_pmap).
            torch.compiler.cudagraph_mark_step_begin()
        with precision_scope(self.precision, self.device):
            try:
                out = self.family.forward_pmap(model, x, self.face_channel)
            except Exception as e:  # noqa: BLE001 - compilers fail in many ways, all at the first call
                if model is self.model or self._compile_checked:
                    raise
                self._compiled = None
                print(
                    f"face_segmentation_pytorch: compilation is not available here ({_first_line(e)}); "
                    "running uncompiled",
                    file=sys.stderr,
                )
                return self._torch_forward(batch[:n])
        if model is not self.model and not self._compile_checked:
            self._compile_checked = True
            print(
                f"face_segmentation_pytorch: compiled ({self.family.compile_mode(self.device) or 'default'} mode) "
                f"in {time.perf_counter() - self._compile_start:.1f} s",
                file=sys.stderr,
            )
        return out[:n].float()

    def _compile(self) -> None:
        """Wrap the model in ``torch.compile``; compilation itself happens at the first batch."""
        mode = self.family.compile_mode(self.device)
        print(
            f"face_segmentation_pytorch: compiling the network for {self.device} "
            f"({mode or 'default'} mode); the first batch waits for it",
            file=sys.stderr,
        )
        self._cuda_graphs = mode == "reduce-overhead" and self.device.type == "cuda"
        self._compile_start = time.perf_counter()
        self._compile_checked = False
        self._compile_batch = 0
        try:
            self._compiled = torch.compile(self.model, mode=mode, dynamic=False)
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile unsupported on this Python
            print(
                f"face_segmentation_pytorch: compilation is not available here ({_first_line(e)}); running uncompiled",
                file=sys.stderr,
            )

    def segment(self, images, boxes=None):
        """Segment one image or a list of them.

        Args:
            images: A path, PIL image or ``(H, W, 3)`` uint8 RGB array, or a
                list of those. Paths are read with EXIF orientation applied.
            boxes: Crop boxes ``(x, y, w, h)`` to use instead of detection: a
                list of boxes for a single image, or one such list (or
                ``None`` to detect) per image.

        Returns:
            A :class:`Segmentation`, or a list of them for a list input.
        """
        single = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray))
        items = [images] if single else list(images)
        if single and boxes is not None:
            boxes = [boxes]
        paths = [Path(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
        pics = [load_image(x) if p is not None else x for x, p in zip(items, paths)]
        results = self.segment_loaded(pics, paths, boxes=boxes)
        return results[0] if single else results

    @property
    def detector(self) -> FaceDetector | None:
        """The face detector (this thread's), or ``None`` without cropping."""
        return self.preparer.detector()

    # The settings live in the preparer and the assembler (which worker
    # processes receive); these keep ``seg.threshold = 0.7`` and the like working.
    threshold = _setting(
        "assembler", "threshold", "Face probability above which a pixel is in the mask (``None``: maps only)."
    )
    steps = _setting("assembler", "steps", "Post-processing steps applied to masks.")
    dilate = _setting("assembler", "dilate", "Pixels each mask grows (negative: shrinks) after the steps.")
    feather = _setting("assembler", "feather", "Feather radius of the final mask's edge, in pixels.")
    input_size = _setting("preparer", "input_size", "Side or ``(h, w)`` inputs are resized to; ``None``: native size.")

    def _to_batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """uint8 inputs (one padded shape) -> the normalised float batch on the device.

        On CUDA the uint8 tensors go over in one copy from pinned host memory
        (4x less than float32, and asynchronous); the mean, scaling and padding
        run there. Every step is elementwise, so the values equal the CPU's.
        Inputs may be arrays (from worker processes) or tensors. Float inputs
        are taken as network inputs already (what ``prepare`` made before inputs
        stayed uint8): they are only stacked and moved.
        """
        inputs = [torch.as_tensor(x) for x in inputs]
        if all(x.is_floating_point() for x in inputs):
            return torch.stack(inputs).to(self.device)
        if any(x.is_floating_point() for x in inputs):
            raise ValueError("a batch mixes float network inputs with uint8 images; prepare them the same way")
        if self.device.type == "cuda":
            sizes = [x.numel() for x in inputs]
            host = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
            torch.cat([x.reshape(-1) for x in inputs], out=host)
            flat = host.to(self.device, non_blocking=True)
            inputs = [piece.view(x.shape) for piece, x in zip(flat.split(sizes), inputs)]
        if len({tuple(x.shape) for x in inputs}) == 1:
            return self._pad(
                normalize_inputs(torch.stack(inputs), self.preprocessing, pre_normalize=self.pre_normalize)
            )
        return torch.stack(
            [self._pad(normalize_inputs(x, self.preprocessing, pre_normalize=self.pre_normalize)) for x in inputs]
        )

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.family.size_multiple
        h, w = x.shape[-2:]
        if h % m or w % m:
            # Native size for a network that needs multiples of m: pad with
            # zeros (the mean, after normalisation) at the bottom and right;
            # run_inputs crops the map back to (h, w) before resizing.
            x = F.pad(x, (0, -w % m, 0, -h % m))
        return x

    def prepare(
        self,
        image: Image.Image | np.ndarray,
        path: Path | None = None,
        boxes: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> Prepared:
        """Everything before the network for one image: face detection or the
        given boxes, crops, resizing and channel order (:class:`Preparer`).
        Thread-safe, so a pipeline can run it in worker threads while
        :meth:`run` computes; :attr:`preparer` does the same in processes."""
        return self.preparer.prepare(image, path, boxes)

    def start(self, prepared: Sequence[Prepared], *, masks_only: bool = False) -> PendingMaps:
        """Launch the network on prepared images (all their inputs in one batch
        where shapes allow) and return at once; ``.result()`` waits and gives
        each input's map at its size, in order (on CUDA this overlaps the next
        batch's preparation with this one's computation).

        ``masks_only`` (with a threshold): threshold on the device and bring
        back boolean masks instead of probabilities, for callers that write
        masks only; :meth:`Assembler.assemble` takes either.
        """
        if masks_only and self.threshold is None:
            raise ValueError("masks_only needs a threshold")
        inputs = [x for p in prepared for x in p.inputs]
        sizes = [sz for p in prepared for sz in p.sizes]
        valid = [v for p in prepared for v in (p.valid or [None] * len(p.inputs))]
        return start_inputs(
            self._forward,
            inputs,
            sizes,
            valid,
            to_batch=self._to_batch,
            multiple=self.family.size_multiple,
            threshold=self.threshold if masks_only else None,
        )

    @staticmethod
    def split_maps(prepared: Sequence[Prepared], maps: Sequence[torch.Tensor]) -> list[list[np.ndarray]]:
        """The flat list of maps from :meth:`start` cut per prepared image, as arrays."""
        it = iter(maps)
        return [[next(it).numpy() for _ in p.inputs] for p in prepared]

    def run(self, prepared: Sequence[Prepared]) -> list[Segmentation]:
        """Run the network on prepared images (all their inputs in one batch
        where shapes allow) and assemble full-size maps and masks (:class:`Assembler`).

        With cropping, each face is thresholded and post-processed on its own
        (so ``largest`` keeps one region per face), and the results are pasted
        into full-size maps: the probability is the maximum over faces and 0
        elsewhere, the mask the union.
        """
        per_image = self.split_maps(prepared, self.start(prepared).result())
        return [self.assembler.assemble(p, maps) for p, maps in zip(prepared, per_image)]

    def segment_loaded(
        self,
        images: Sequence[Image.Image | np.ndarray],
        paths: Sequence[Path | None] | None = None,
        *,
        boxes: Sequence[Sequence[tuple[int, int, int, int]] | None] | None = None,
    ) -> list[Segmentation]:
        """:meth:`prepare` then :meth:`run` for images already in memory, as one batch."""
        paths = list(paths) if paths is not None else [None] * len(images)
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        return self.run([self.prepare(img, p, b) for img, p, b in zip(images, paths, boxes)])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)
