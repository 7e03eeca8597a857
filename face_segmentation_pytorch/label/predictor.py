"""The current model of a labelling project: its face probabilities per frame, and the scan
that scores every frame for :mod:`.suggest`.

The current model is the ``best.pt`` of the newest fine-tuning round that has
one, else the starting weights (``WEIGHTS_FILE``, or the published ``WEIGHTS``).
A model is known by an id made of its file's path, modification time and size,
so a round that writes a new ``best.pt`` is picked up at the next request.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import suggest
from .frames import FrameSource
from .project import Project

__all__ = ["ModelInfo", "Predictor", "Scanner"]


class ModelInfo:
    """Which weights are current: ``id`` (short, for URLs and caches), ``path`` (``None``: the
    published weights), ``name`` (for the page)."""

    def __init__(self, path: Path | None, name: str, key: str) -> None:
        self.path = path
        self.name = name
        self.id = hashlib.sha1(key.encode()).hexdigest()[:12]

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "weights_file": str(self.path) if self.path else None}


class Predictor:
    """Face probabilities of frames with the current model (built once per model, results cached).

    Args:
        project: The project (its rounds decide the current model).
        frames: The source's frames.
        settings: The label command's settings (``WEIGHTS``, ``WEIGHTS_FILE``,
            ``MODEL_PARAMS_DIR``, ``INPUT_SIZE``, ``DEVICE``).
    """

    def __init__(self, project: Project, frames: FrameSource, settings: dict, cache: int = 64) -> None:
        self.project = project
        self.frames = frames
        self.settings = settings
        self._lock = threading.Lock()
        self._segmenter = None
        self._segmenter_id = None
        self._maps: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache = cache

    def start_weights(self) -> Path | None:
        wf = self.settings.get("WEIGHTS_FILE")
        return Path(wf) if wf else None

    def current(self) -> ModelInfo:
        """The current model (cheap: a few ``stat`` calls)."""
        r = self.project.current_round()
        path = r.best if r is not None else self.start_weights()
        if path is None:
            return ModelInfo(
                None, f"published {self.settings['WEIGHTS']} weights", f"published:{self.settings['WEIGHTS']}"
            )
        try:
            st = path.stat()
            key = f"{os.path.realpath(path)}|{st.st_mtime_ns}|{st.st_size}"
        except OSError:
            key = str(path)
        name = f"{r.name} best.pt" if r is not None else f"starting weights {path.name}"
        return ModelInfo(path, name, key)

    def _build(self, info: ModelInfo):
        import face_segmentation_pytorch as fsp

        s = self.settings
        try:
            return fsp.FaceSegmenter(
                s["WEIGHTS"],
                weights_file=info.path,
                params_dir=s.get("MODEL_PARAMS_DIR"),
                input_size=s["INPUT_SIZE"],
                threshold=None,
                device=s.get("DEVICE"),
                progress=False,
            )
        except ValueError as e:  # sizes and devices the segmenter refuses
            raise ConfigError(f"cannot run {info.name}: {e}") from None

    def check(self) -> ModelInfo:
        """Build the current model now, so that a bad setting fails at start with one line.

        Raises:
            ConfigError: A setting the segmenter refuses.
            WeightsError: The weights cannot be found or read.
        """
        info = self.current()
        with self._lock:
            self._ensure(info)
        return info

    def _ensure(self, info: ModelInfo) -> None:
        if self._segmenter_id != info.id:
            self._segmenter = self._build(info)
            self._segmenter_id = info.id

    def pmap_u8(self, i: int, info: ModelInfo | None = None) -> tuple[str, np.ndarray]:
        """``(model id, face probability of frame i as uint8 = round(255 p))``.

        Raises:
            IndexError, FrameError: No such frame / it cannot be decoded.
            FaceSegmentationError: The model cannot be loaded.
        """
        info = info or self.current()
        key = (info.id, i)
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return info.id, self._maps[key]
        frame = self.frames.get(i)
        with self._lock:
            self._ensure(info)
            pmap = self._segmenter.segment(np.ascontiguousarray(frame)).pmap
            u8 = np.rint(np.clip(pmap, 0.0, 1.0) * 255.0).astype(np.uint8)
            self._maps[key] = u8
            while len(self._maps) > self._cache:
                self._maps.popitem(last=False)
        return info.id, u8

    def pmap(self, i: int, info: ModelInfo | None = None) -> np.ndarray:
        """Frame ``i``'s face probability (float32, full precision; not cached)."""
        info = info or self.current()
        frame = self.frames.get(i)
        with self._lock:
            self._ensure(info)
            return self._segmenter.segment(np.ascontiguousarray(frame)).pmap


class Scanner:
    """Scores the scanned frames with the current model in a background thread; results in ``scan.json``.

    A scan runs when the current model has none and no job (fine-tune, apply)
    is busy with the CPU; it restarts when the model changes.
    """

    def __init__(self, predictor: Predictor, settings: dict) -> None:
        self.predictor = predictor
        self.project = predictor.project
        self.settings = settings
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.progress = {"state": "idle", "done": 0, "total": 0, "model": None, "error": None}
        self._result = self._load()

    def _load(self) -> dict:
        data = self.project.read_json(self.project.scan_file)
        keys = ("model", "frames", "unsure", "jump", "threshold")
        if not all(k in data for k in keys) or not (len(data["frames"]) == len(data["unsure"]) == len(data["jump"])):
            return {}
        return data

    def result(self, model_id: str) -> dict:
        """The scan of ``model_id`` (``{}`` when there is none yet)."""
        with self._lock:
            r = self._result
            ok = r.get("model") == model_id and r.get("threshold") == self.settings["THRESHOLD"]
            return dict(r) if ok else {}

    def ensure(self, busy: bool) -> None:
        """Start a scan of the current model if it has none and ``busy`` is false."""
        info = self.predictor.current()
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running and self.progress["model"] == info.id:
                return
            have = self._result.get("model") == info.id and self._result.get("threshold") == self.settings["THRESHOLD"]
            if have or busy or running:
                if running and self.progress["model"] != info.id:
                    self._stop.set()  # a newer model: this scan is stale
                return
            if self.progress.get("error") and self.progress["model"] == info.id:
                return  # failed for this model: not again and again
            self._stop = threading.Event()
            frames = suggest.scan_indices(self.predictor.frames.count, int(self.settings["SCAN_FRAMES"]))
            self.progress = {"state": "running", "done": 0, "total": len(frames), "model": info.id, "error": None}
            self._thread = threading.Thread(target=self._run, args=(info, frames, self._stop), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self, info, frames: list[int], stop: threading.Event) -> None:
        threshold = float(self.settings["THRESHOLD"])
        unsure, masks, scanned = [], [], []
        try:
            for i in frames:
                if stop.is_set():
                    with self._lock:
                        self.progress["state"] = "idle"
                    return
                _, u8 = self.predictor.pmap_u8(i, info)
                p = u8.astype(np.float32) / 255.0
                unsure.append(suggest.unsure(p))
                masks.append(p > threshold)
                scanned.append(i)
                with self._lock:
                    self.progress["done"] += 1
        except Exception as e:  # noqa: BLE001 - whatever stops it, the page says so (and it is not retried)
            with self._lock:
                self.progress.update(state="failed", error=str(e))
            return
        jump = suggest.jump_scores(masks)
        result = {
            "model": info.id,
            "threshold": self.settings["THRESHOLD"],
            "frames": scanned,
            "unsure": [round(u, 6) for u in unsure],
            "jump": [round(j, 6) for j in jump],
        }
        try:
            self.project.write_json(self.project.scan_file, result)
        except OSError:
            pass  # kept in memory; the next start scans again
        with self._lock:
            self._result = result
            self.progress["state"] = "done"
