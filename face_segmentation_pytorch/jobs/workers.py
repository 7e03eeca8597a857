"""The per-image work of a batch run, and the pools that do it beside the network.

A batch run has three kinds of work. Reading (decode, face detection, crops,
resizing: :class:`~.segmenter.Preparer`) and writing (thresholding,
post-processing, feathering: :class:`~.segmenter.Assembler`; then PNG encoding
and atomic writes) are per image and need no network; the network runs in the
main process, on its device. A :class:`Job` holds the first two, and a pool
runs them beside the network:

- :class:`ThreadWorkers` (``PIPELINE=threads``): threads of the main process.
  Enough where the network is the slow part (a CPU: 0.7-2 s per FCN-8s image
  against ~10 ms of image work), and nothing to start.
- :class:`ProcessWorkers` (``PIPELINE=processes``): worker processes, each
  with its own interpreter, so image work scales over the cores instead of
  queueing for one GIL (a GPU eats an image in 1-3 ms; decoding, resizing and
  PNG encoding one 640x480 image take about 7 ms of CPU, measured on an H100
  machine). Images
  travel as uint8 at the network's size (4x less than float32) and come back
  as probability maps; the image itself is not sent back and forth, the
  writer reads it again only for the outputs that show it (overlay, cut-out,
  gallery).

Both run the same :meth:`Job.read` and :meth:`Job.write`, so their outputs
are the same, byte for byte (a test checks it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..segmentation.segmenter import Assembler, Prepared, Preparer

__all__ = [
    "Job",
    "Written",
    "ThreadWorkers",
    "ProcessWorkers",
    "BrokenProcessPool",
    "PIPELINES",
    "choose_pipeline",
    "default_workers",
]

PIPELINES = ("auto", "threads", "processes")

#: Outputs that show the image itself; only these make a writer read it again.
_SHOW_IMAGE = ("__overlay.png", "__cutout.png")


def choose_pipeline(setting: str, device_type: str) -> str:
    """``auto`` -> ``processes`` on CUDA, ``threads`` on the CPU.

    On the CPU the network takes 0.7-2 s per FCN-8s image, so a thread or two
    keep it fed and extra processes only cost start-up and memory: threads and
    processes ran alike on 2 cores (README "A folder of images", 2026-12-02,
    ``benchmarks/folder_throughput.py --pipeline threads,processes``). On CUDA
    the image work is the bottleneck (an H100 run: the CLI fed the GPU at 0.24
    of its forward rate with threads), so it goes to processes.
    """
    if setting != "auto":
        return setting
    return "processes" if device_type == "cuda" else "threads"


def default_workers(pipeline: str) -> int:
    """``WORKERS=auto``: 2 threads; for processes, every core this process may
    use (its affinity, as a container or ``taskset`` sets it) but one for the
    main process (which feeds the device) and one for the system, at most 16."""
    if pipeline == "threads":
        return 2
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, min(16, cores - 2))


@dataclass
class Written:
    """What :meth:`Job.write` reports for one image.

    Attributes:
        failure: ``(stage, reason)`` when it failed, else ``None``.
        gallery_row: The gallery's row for this image, when one was asked for.
    """

    failure: tuple[str, str] | None = None
    gallery_row: tuple | None = None


@dataclass
class Job:
    """The per-image work of one batch run, without the network.

    Attributes:
        preparer: Reading side (detection, crops, resizing).
        assembler: Writing side (threshold, post-processing, feathering).
        kinds: The output suffixes to write (``__mask.png``, ...).
        per_face: Also write one mask per face.
        max_image_pixels: Pillow's decompression-bomb limit to set in a worker
            process (``None``: Pillow's default).
    """

    preparer: Preparer
    assembler: Assembler
    kinds: list[str]
    per_face: bool = False
    max_image_pixels: int | None = None

    def read(self, items: Sequence[tuple[int, Path, list | None]]) -> list[tuple[int, Prepared | tuple[str, str]]]:
        """Decode and prepare images: ``(index, Prepared)``, or ``(index, (stage, reason))``."""
        from ..files.imageio import load_image
        from .folder import first_line

        out = []
        for i, path, boxes in items:
            try:
                img = load_image(path)
            except ImageReadError as e:
                out.append((i, ("read", str(e))))
                continue
            try:
                out.append((i, self.preparer.prepare(img, path, boxes)))
            except (RuntimeError, ValueError, OSError) as e:
                out.append((i, ("prepare", first_line(e))))
        return out

    def needs_image(self, gallery: bool) -> bool:
        """Whether writing needs the image itself (not only its maps)."""
        return gallery or any(k in self.kinds for k in _SHOW_IMAGE)

    def write(self, stem: Path, prepared: Prepared, maps: Sequence[np.ndarray], gallery: bool = False) -> Written:
        """Assemble one image's result from its maps and write its outputs atomically.

        ``prepared.image`` may be ``None`` (it came from a worker process):
        the image is then read again, only if an output shows it.
        """
        from ..files.imageio import as_rgb_image, load_image
        from .folder import first_line, gallery_row, write_outputs

        if prepared.image is None and self.needs_image(gallery):
            try:
                prepared = replace(prepared, image=as_rgb_image(load_image(prepared.path)))
            except ImageReadError as e:
                return Written(("write", f"read again for its overlay or cut-out: {e}"))
        try:
            seg = self.assembler.assemble(prepared, maps)
        except (RuntimeError, ValueError) as e:
            return Written(("inference", first_line(e)))
        try:
            write_outputs(seg, stem, self.kinds, per_face=self.per_face)
            row = gallery_row(prepared.path, seg) if gallery else None
        except (OSError, ValueError) as e:
            return Written(("write", first_line(e)))
        return Written(None, row)


class ThreadWorkers:
    """Runs a :class:`Job`'s reads and writes in threads of this process."""

    kind = "threads"

    def __init__(self, workers: int) -> None:
        self.job: Job | None = None
        self._readers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsp-read")
        self._writers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsp-write")

    def bind(self, job: Job) -> None:
        """The job the next reads and writes do."""
        self.job = job

    def read(self, items) -> Future:
        return self._readers.submit(self.job.read, items)

    def result(self, fut: Future):
        """``fut.result()``."""
        return fut.result()

    def write(self, stem: Path, prepared: Prepared, maps, gallery: bool) -> Future:
        return self._writers.submit(self.job.write, stem, prepared, maps, gallery)

    def shutdown(self) -> None:
        self._readers.shutdown(wait=True, cancel_futures=True)
        self._writers.shutdown(wait=True)


# --------------------------------------------------------------------------- processes

_JOB: Job | None = None
_JOB_BLOB: bytes | None = None


def _init_process() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the main process
    # stops the run and lets writes in flight finish; workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    # One thread each: the processes are the parallelism (resizing in torch
    # and OpenCV's post-processing and detection would otherwise start a
    # thread per core in every worker).
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # the [postprocess] / [crop] extras are not installed
        pass


def _ready() -> int:
    return os.getpid()


def _job(blob: bytes) -> Job:
    """This process's copy of the job, unpickled once (its detectors are kept)."""
    global _JOB, _JOB_BLOB
    if blob != _JOB_BLOB:
        import pickle

        from PIL import Image

        _JOB, _JOB_BLOB = pickle.loads(blob), blob
        if _JOB.max_image_pixels is not None:
            Image.MAX_IMAGE_PIXELS = _JOB.max_image_pixels
    return _JOB


def _read_in_process(blob, items):
    out = []
    for i, item in _job(blob).read(items):
        if isinstance(item, Prepared):
            # Sent as uint8 arrays (pickled as bytes); the image is not sent.
            item = replace(item, image=None, inputs=[x.numpy() for x in item.inputs])
        out.append((i, item))
    return out


def _write_in_process(blob, stem, prepared, maps, gallery):
    return _job(blob).write(stem, prepared, maps, gallery)


class ProcessWorkers:
    """Runs a :class:`Job`'s reads and writes in worker processes.

    Processes are started with ``spawn`` (never ``fork``: the main process
    may hold CUDA and thread pools that a forked child cannot use), ignore
    Ctrl-C (the main process ends the run), and use one thread each. They
    start at construction, so their imports overlap the loading of the
    weights; :meth:`bind` then gives them the job. A worker that dies
    (killed, out of memory) breaks the pool: the futures then raise
    :class:`BrokenProcessPool`, and the batch command starts a new pool and
    retries the images that were in flight one at a time (``jobs.local.run_local``).
    """

    kind = "processes"

    def __init__(self, workers: int) -> None:
        import multiprocessing

        self.job: Job | None = None
        self._blob = b""
        self._dead_since: float | None = None
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_process
        )
        # Start them all now, with SIGINT ignored: an ignored signal stays
        # ignored in a spawned child, so a Ctrl-C while they import torch
        # cannot kill them with a traceback before _init_process runs.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            for _ in range(workers):
                self._pool.submit(_ready)
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGINT, previous)

    def result(self, fut: Future):
        """``fut.result()``, watching the workers while it waits.

        CPython's pool reads every worker's results from one shared pipe. A
        worker killed while writing a result leaves half a message there, and
        the pool's own thread then blocks for good reading the rest instead of
        reporting the dead worker (seen here about once in six SIGKILLs). So a
        worker dead for 2 s without the pool breaking gets the pool broken by
        hand: the other workers are ended and this process's end of the pipe
        is closed, the read ends, and the futures raise BrokenProcessPool.
        """
        while True:
            try:
                return fut.result(timeout=0.5)
            except FuturesTimeout:
                self._watch()

    def _watch(self) -> None:
        # A copy: the pool's thread removes processes from its dict as they end.
        processes = list(dict(getattr(self._pool, "_processes", None) or {}).values())
        if not any(p.exitcode is not None for p in processes):
            self._dead_since = None
            return
        now = time.monotonic()
        if self._dead_since is None:
            self._dead_since = now
        if now - self._dead_since < 2.0:  # the pool normally notices at once
            return
        for p in processes:
            if p.exitcode is None:
                p.kill()
        for p in processes:
            p.join(timeout=5)
        writer = getattr(getattr(self._pool, "_result_queue", None), "_writer", None)
        if writer is not None:
            writer.close()

    def bind(self, job: Job) -> None:
        """The job the next reads and writes do (sent pickled with each task: a few hundred bytes)."""
        import pickle

        self.job, self._blob = job, pickle.dumps(job)

    def read(self, items) -> Future:
        return self._pool.submit(_read_in_process, self._blob, items)

    def write(self, stem: Path, prepared: Prepared, maps, gallery: bool) -> Future:
        # The inputs have been used; the image (if any) is read again there when needed.
        light = replace(prepared, image=None, inputs=[])
        return self._pool.submit(_write_in_process, self._blob, stem, light, [np.asarray(m) for m in maps], gallery)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
