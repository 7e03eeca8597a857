"""Run the batch job on Ray Data: many actors, one pipeline (``ENGINE=ray``).

Nothing here schedules work: Ray Data does. Each Ray actor builds one
:class:`~.segmenter.FaceSegmenter` (weights loaded once per actor) and runs a
``map_batches`` batch the way the single-process command does: the same
reading, the same :meth:`~.segmenter.FaceSegmenter.prepare` /
:meth:`~.segmenter.FaceSegmenter.run`, the same ``_write_outputs`` with its
temp-then-rename writes. The driver plans the job with the command line's own
helpers (``collect_inputs``, ``_output_stems``, ``_output_kinds``, the resume
rule) and reports it with its failure log, summary and exit status, so
``ENGINE=ray`` and ``ENGINE=local`` differ only in who runs the images.

Two entry points:

- :func:`run_ray`: the ``python -m face_segmentation_pytorch ENGINE=ray ...``
  job (called by ``cli.run``).
- :func:`segment_dataset`: for Ray users, a Ray Dataset of image paths (or
  bytes, e.g. from ``ray.data.read_binary_files(..., include_paths=True)``)
  in, a Dataset of results out: masks and heatmaps as arrays, or files
  written where a ``stem`` column says.

Ray is an optional dependency (``pip install "face_segmentation_pytorch[ray]"``);
this module imports it only when a job runs, so the command line can say
which extra is missing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import socket
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ConfigError, ImageReadError
from ..segmentation.backends import CPU_ONLY_BACKENDS, backend_device
from . import folder as folder_job
from .folder import make_segmenter, start_line  # one segmenter, as ENGINE=local builds it
from .settings import KEYS, SEGMENTER_KEYS

__all__ = [
    "run_ray",
    "segment_dataset",
    "SegmentImages",
    "plan_actors",
    "remove_stale_partials",
    "make_segmenter",
    "RAY_EXTRA",
    "SEGMENTER_KEYS",
    "HANDLED_KEYS",
]

#: How to install what ``ENGINE=ray`` needs.
RAY_EXTRA = "pip install 'face_segmentation_pytorch[ray]'"

#: CPUs left free on every node for Ray Data's own small tasks. Actors that
#: take every CPU starve them and the job never ends (seen on a 2-CPU Ray:
#: two actors of one CPU each deadlock; the same actors at 0.5 CPU run).
CPU_RESERVE_PER_NODE = 0.5

#: With GALLERY, the first this-many images to run each send back their
#: gallery row, so that the first 16 that succeed (in input order) fill it,
#: as with ENGINE=local, unless more than this-many-minus-16 of them fail.
_GALLERY_CANDIDATES = 32
_GALLERY_ROWS = 16

# ``pipeline.atomic`` names its temporary files ``.<final name>.<8 hex>.partial``.
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.partial$")
_PER_FACE = re.compile(r"__face\d+__mask\.png$")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the [ray] extra is ray[data])
    except ImportError as e:
        raise ConfigError(f"ENGINE=ray needs Ray Data: {RAY_EXTRA} ({e})") from None
    return ray


# --------------------------------------------------------------------------
# Sizing the actor pool
# --------------------------------------------------------------------------


def plan_actors(
    nodes: Sequence[tuple[float, float]],
    num_actors: int | None,
    gpus_per_actor: float = 0.0,
    reserve: float = CPU_RESERVE_PER_NODE,
) -> tuple[int, float]:
    """Choose how many actors to start and how many CPUs each asks Ray for.

    The CPU share is the largest that lets all actors be placed at once,
    node by node, with ``reserve`` CPUs left free on each node: Ray Data needs
    a little CPU beside the actors, and an actor that does not fit anywhere
    would leave the pool waiting.

    Args:
        nodes: ``(CPUs, GPUs)`` of each alive node of the cluster.
        num_actors: Actors wanted; ``None``: one per GPU slot when
            ``gpus_per_actor > 0`` (``GPUs // gpus_per_actor`` per node), else
            one per node (each using that node's CPUs through torch threads).
        gpus_per_actor: GPUs each actor asks for (0: CPU actors; 0.5: two
            actors share a GPU).
        reserve: CPUs kept free on every node.

    Returns:
        ``(actors, CPUs per actor)``.

    Raises:
        ConfigError: The cluster cannot hold the actors (no GPUs, too few
            GPU slots, or no CPU to spare).
    """
    usable = [(max(0.0, float(c) - reserve), float(g)) for c, g in nodes]
    if gpus_per_actor > 0:
        usable = [(c, int(g / gpus_per_actor + 1e-9)) for c, g in usable]
        usable = [(c, slots) for c, slots in usable if slots > 0 and c > 0]
        gpu_slots = sum(slots for _, slots in usable)
        if gpu_slots == 0:
            gpus = sum(float(g) for _, g in nodes)
            raise ConfigError(
                f"RAY_GPUS_PER_ACTOR={gpus_per_actor}: the Ray cluster has {gpus:g} GPUs, "
                "no node can hold such an actor; use RAY_GPUS_PER_ACTOR=0 for CPU actors"
            )
        n = num_actors or gpu_slots
        if n > gpu_slots:
            raise ConfigError(
                f"RAY_NUM_ACTORS={n} with RAY_GPUS_PER_ACTOR={gpus_per_actor} needs {n * gpus_per_actor:g} "
                f"GPUs; the Ray cluster holds {gpu_slots} such actors"
            )
    else:
        usable = [(c, math.inf) for c, _ in usable if c > 0]
        n = num_actors or len(usable)
    if not usable or n < 1:
        raise ConfigError("the Ray cluster has no CPU to spare for actors; add CPUs or nodes")

    def fits(x: float) -> bool:
        return sum(min(int(c / x + 1e-9), slots) for c, slots in usable) >= n

    # The best share is some node's usable CPUs divided by a whole number of
    # actors on it; try those, largest first.
    shares = sorted({c / k for c, _ in usable for k in range(1, n + 1)}, reverse=True)
    share = next((x for x in shares if fits(x)), None)
    if share is None:  # unreachable: c / n always fits n actors on that node
        raise ConfigError(f"the Ray cluster cannot place {n} actors")
    # Ray accepts shares of a CPU down to 1e-4; round down so sums never exceed a node.
    return n, math.floor(share * 1e4) / 1e4


def torch_threads(cpus: float) -> int:
    """Intra-op threads for an actor with a CPU share of ``cpus`` (at least 1)."""
    return max(1, int(cpus + 0.5))


# --------------------------------------------------------------------------
# The map_batches UDF
# --------------------------------------------------------------------------


def _settings(settings: Mapping[str, object] | None) -> dict:
    """The command line's keys with their defaults, updated by ``settings``."""
    cfg = {name: key.default for name, key in KEYS.items()}
    for name, value in (settings or {}).items():
        if name not in KEYS:
            raise ValueError(f"unknown setting {name!r}; the settings are the command line's keys (--help)")
        cfg[name] = value
    return cfg


#: The command line's keys ``ENGINE=ray`` honours: the segmenter's, and those the
#: driver (inputs, outputs, report) or the actors (WORKERS, MAX_IMAGE_PIXELS)
#: use as ``jobs.local.run_local`` does (PIPELINE: actors are processes already and read in
#: threads; ``parse_args`` refuses PIPELINE=processes with ENGINE=ray). A test fails on a key missing here, so a new
#: key is not silently ignored by this engine.
HANDLED_KEYS = frozenset(SEGMENTER_KEYS.values()) | {
    "IMGS_DIR",
    "OUT_DIR",
    "DEVICE",
    "BATCH_SIZE",
    "WEIGHTS",
    "HEATMAP_FORMAT",
    "OVERLAY",
    "CUTOUT",
    "GALLERY",
    "BOXES",
    "PER_FACE",
    "RECURSIVE",
    "OVERWRITE",
    "FAILURE_LOG",
    "WORKERS",
    "MAX_IMAGE_PIXELS",
    "PROGRESS",
    "ENGINE",
    "RAY_ADDRESS",
    "RAY_NUM_ACTORS",
    "RAY_GPUS_PER_ACTOR",
    "PIPELINE",
}


def _load_bytes(data: bytes, name: str):
    """Decode image bytes exactly as :func:`~.imageio.load_image` decodes a file.

    The bytes go through a temporary file so that EXIF orientation, bit-depth
    rules and error messages are those of the one reader; messages name
    ``name`` (the source path), not the temporary file.
    """
    import tempfile

    from ..files.imageio import load_image

    suffix = Path(name).suffix if name else ""
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="fsp_ray_") as f:
        f.write(data)
        f.flush()
        try:
            return load_image(f.name)
        except ImageReadError as e:
            raise ImageReadError(str(e).replace(f.name, name or "<bytes>")) from None


class SegmentImages:
    """Ray Data ``map_batches`` callable class: one :class:`FaceSegmenter` per actor.

    Ray builds one instance per actor, so the weights load once per actor; its
    constructor arguments are small (settings, numbers), since Ray may have to
    rebuild a killed actor from them (ray-project/ray#53727).

    Input columns (a batch of ``dict[str, numpy.ndarray]``):

    - ``path`` (str): the image file, or the source name of ``bytes``;
    - ``bytes`` (binary, optional): the encoded image, read instead of ``path``;
    - ``stem`` (str, optional): write the outputs to ``<stem><kind>`` (the
      command line's names, e.g. ``out/photo__mask.png``), atomically; without
      it the results come back as arrays;
    - ``boxes`` (str, optional): JSON crop boxes ``[[x, y, w, h], ...]``
      (``null``: detect, with ``CROP=faces``);
    - ``i`` (int, optional): a row number carried through;
    - ``gallery`` (bool, optional): also return the image's gallery row.

    Output columns: ``i``, ``path``, ``status`` (``done`` or ``failed``),
    ``stage`` (``read``, ``prepare``, ``inference`` or ``write`` when failed),
    ``reason`` (one line), ``faces`` (faces found; -1 without cropping),
    ``gallery`` (pickled gallery row, or empty bytes); without ``stem``
    also ``heatmap`` (float32 ``(H, W)`` face probability) and ``mask``
    (uint8 ``(H, W)``: what ``__mask.png`` holds; empty without a threshold).

    A failed image is a row, not an exception: one corrupt file fails itself,
    never the job. The exceptions caught per stage are those ``ENGINE=local``
    catches, so both engines fail the same images the same way.

    Args:
        settings: The command line's keys (``WEIGHTS``, ``MODEL_PARAMS_DIR``,
            ``MASK_THRESHOLD``...); missing keys take their defaults.
        threads: torch intra-op threads (``None``: torch's default).
    """

    def __init__(self, settings: Mapping[str, object], threads: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch
        from PIL import Image

        self.cfg = _settings(settings)
        if threads is not None:
            torch.set_num_threads(threads)
        if self.cfg["MAX_IMAGE_PIXELS"] is not None:  # this process's Pillow, not the driver's
            Image.MAX_IMAGE_PIXELS = self.cfg["MAX_IMAGE_PIXELS"]
        # Ray gives an actor that asked for GPUs those GPUs alone (CUDA_VISIBLE_DEVICES),
        # so DEVICE=null picks CUDA there; segment_dataset names the CPU for actors
        # that asked for none (Ray leaves them every GPU of the node).
        device = backend_device(self.cfg["BACKEND"], self.cfg["DEVICE"])
        self.segmenter = make_segmenter(self.cfg, device, progress=False)
        self.kinds = folder_job.output_kinds(self.cfg)
        # Decoding and writing overlap within a batch, as WORKERS threads do locally.
        workers = 2 if self.cfg["WORKERS"] == "auto" else int(self.cfg["WORKERS"])
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsp-ray")

    def _outputs_exist(self, stem: Path) -> bool:
        return all(stem.with_name(stem.name + k).exists() for k in self.kinds)

    def _read(self, row: dict):
        """Decode and prepare one image; a ``(stage, reason)`` tuple when it fails."""
        from ..files.imageio import load_image

        path = row["path"]
        try:
            img = _load_bytes(row["bytes"], path) if row.get("bytes") is not None else load_image(path)
        except ImageReadError as e:
            return ("read", str(e))
        try:
            boxes = json.loads(row["boxes"]) if row.get("boxes") else None
            return self.segmenter.prepare(img, Path(path) if path else None, boxes)
        except (RuntimeError, ValueError, OSError) as e:
            return ("prepare", folder_job.first_line(e))

    def _write(self, seg, stem: str) -> None:

        folder_job.write_outputs(seg, Path(stem), self.kinds, per_face=bool(self.cfg["PER_FACE"]))

    def __call__(self, batch: dict) -> dict:
        """Segment one batch (``dict[str, numpy.ndarray]``); one result row per input row."""
        import numpy as np

        n = len(batch["path"])
        rows = [{k: _plain(v[j]) for k, v in batch.items()} for j in range(n)]
        writing = "stem" in batch
        out = {
            "i": [int(r.get("i", j)) for j, r in enumerate(rows)],
            "path": [str(r["path"]) for r in rows],
            "status": ["done"] * n,
            "stage": [""] * n,
            "reason": [""] * n,
            "faces": [-1] * n,
            "gallery": [b""] * n,
        }
        heatmaps = [np.zeros((0, 0), np.float32)] * n
        masks = [np.zeros((0, 0), np.uint8)] * n

        def fail(j: int, stage: str, reason: str) -> None:
            out["status"][j], out["stage"][j], out["reason"][j] = "failed", stage, reason

        # A batch Ray retries after its actor was killed may find some images
        # already written: their outputs are whole (atomic writes), keep them.
        todo = [
            j
            for j in range(n)
            if not (writing and not self.cfg["OVERWRITE"] and self._outputs_exist(Path(rows[j]["stem"])))
        ]
        ready = []
        for j, item in zip(todo, self.pool.map(self._read, [rows[j] for j in todo])):
            if isinstance(item, tuple):
                fail(j, *item)
            else:
                ready.append((j, item))
        if ready:
            try:
                results = self.segmenter.run([p for _, p in ready])
            except (RuntimeError, ValueError) as e:
                for j, _ in ready:
                    fail(j, "inference", folder_job.first_line(e))
                results = []
            writes = []
            for (j, _), seg in zip(ready, results):
                if seg.faces is not None:  # cropped (detected or given boxes)
                    out["faces"][j] = len(seg.faces)
                if rows[j].get("gallery"):
                    out["gallery"][j] = pickle.dumps(folder_job.gallery_row(Path(rows[j]["path"]), seg))
                if writing:
                    writes.append((j, self.pool.submit(self._write, seg, rows[j]["stem"])))
                else:
                    heatmaps[j] = seg.pmap.astype(np.float32)
                    if seg.mask is not None:
                        masks[j] = _mask_array(seg)
            for j, fut in writes:
                try:
                    fut.result()
                except (OSError, ValueError) as e:
                    fail(j, "write", folder_job.first_line(e))
        result = {k: np.asarray(v) for k, v in out.items() if k != "gallery"}
        result["gallery"] = np.array(out["gallery"], dtype=object)
        if not writing:
            result["heatmap"] = _ragged(heatmaps)
            result["mask"] = _ragged(masks)
        return result


def _mask_array(seg):
    """What ``__mask.png`` holds: 0/255, or the feathered alpha as 8-bit grey."""
    import numpy as np

    from ..segmentation.render import heatmap_to_png_array

    return heatmap_to_png_array(seg.alpha, 8) if seg.alpha is not None else seg.mask.astype(np.uint8) * 255


def _ragged(arrays):
    import numpy as np

    out = np.empty(len(arrays), dtype=object)
    for j, a in enumerate(arrays):
        out[j] = a
    return out


def _plain(v):
    """A numpy scalar from a Ray batch as a plain Python value."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    return v


def segment_dataset(
    ds,
    settings: Mapping[str, object] | None = None,
    *,
    num_actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float | None = None,
    batch_size: int | None = None,
):
    """Segment the images of a Ray Dataset with a pool of :class:`SegmentImages` actors.

    Args:
        ds: A ``ray.data.Dataset`` with a ``path`` column (image files every
            node can read) and optionally ``bytes`` (encoded images, e.g.
            ``ray.data.read_binary_files(paths, include_paths=True)``, which
            also reads ``s3://`` and other pyarrow file systems), ``stem``,
            ``boxes``, ``i`` (see :class:`SegmentImages`).
        settings: The command line's keys, e.g. ``{"MODEL_PARAMS_DIR":
            "/shared/weights", "MASK_THRESHOLD": 0.5}``; ``BATCH_SIZE`` is the
            batch size unless ``batch_size`` is given.
        num_actors: Actors in the pool (each loads the weights once).
        gpus_per_actor: GPUs each actor asks Ray for; with 0 and no ``DEVICE``
            setting the actors run on the CPU (Ray would leave them every GPU
            of their node).
        cpus_per_actor: CPUs each actor asks Ray for; ``None``: 1 with GPUs,
            else 0.5 (leaving room for Ray Data's own tasks on small nodes).
        batch_size: Images per forward pass.

    Returns:
        A lazy ``ray.data.Dataset`` of one result row per input row
        (:class:`SegmentImages` lists the columns); iterate it or write it.
    """
    ray = _import_ray()
    cfg = _settings(settings)
    bs = int(batch_size or cfg["BATCH_SIZE"])
    cpus = cpus_per_actor if cpus_per_actor is not None else (1.0 if gpus_per_actor else 0.5)
    small = {k: v for k, v in cfg.items() if v != _default(k)}  # keep the actor arguments small
    if not gpus_per_actor and small.get("DEVICE") is None:
        # Ray leaves CUDA_VISIBLE_DEVICES alone for an actor that asks for no GPU,
        # so on a GPU node DEVICE=null would pick CUDA there: keep such actors on
        # the CPU, as the driver's start line says.
        small["DEVICE"] = "cpu"
    return ds.map_batches(
        SegmentImages,
        fn_constructor_kwargs={"settings": small, "threads": torch_threads(cpus)},
        batch_size=bs,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=int(num_actors)),
        num_cpus=cpus,
        num_gpus=gpus_per_actor or None,
    )


def _default(name: str):
    return KEYS[name].default


# --------------------------------------------------------------------------
# Cleaning up after killed writers
# --------------------------------------------------------------------------


def remove_stale_partials(stems: Sequence[Path], kinds: Sequence[str]) -> list[Path]:
    """Remove temporary files that killed writers left beside this job's outputs.

    Only files named as :mod:`.atomic` names its temporary files
    (``.<output name>.<8 hex>.partial``) for an output this job writes
    (``<stem><kind>`` or a per-face mask) are removed; anything else in the
    folders stays. Call it when no writer of this job is running.

    Returns:
        The files removed.
    """
    wanted: dict[Path, set[str]] = {}
    for stem in stems:
        wanted.setdefault(stem.parent, set()).add(stem.name)
    removed = []
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            m = _PARTIAL.match(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False):
                continue
            target = m.group("name")
            ours = any(target.endswith(k) and target[: -len(k)] in names for k in kinds)
            if not ours:
                face = _PER_FACE.search(target)
                ours = face is not None and target[: face.start()] in names
            if ours:
                try:
                    os.remove(entry.path)
                    removed.append(Path(entry.path))
                except FileNotFoundError:
                    pass
    return removed


# --------------------------------------------------------------------------
# The ENGINE=ray command
# --------------------------------------------------------------------------


def _check_device(cfg: Mapping[str, object], gpus_per_actor: float) -> str:
    """The device the actors will use, in words; a mistake is a ConfigError."""
    import torch

    name = cfg["DEVICE"]
    if cfg["BACKEND"] in CPU_ONLY_BACKENDS:
        if gpus_per_actor:
            raise ConfigError(
                f"RAY_GPUS_PER_ACTOR: BACKEND={cfg['BACKEND']} runs on the CPU here; use RAY_GPUS_PER_ACTOR=0"
            )
        name = name or "cpu"
    if name is None:
        return "cuda" if gpus_per_actor else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"DEVICE={name!r} is invalid: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"DEVICE={name!r} is not supported: use cpu or cuda")
    if device.type == "cuda" and not gpus_per_actor:
        raise ConfigError(
            f"DEVICE={name}: Ray gives an actor a GPU only when it asks for one; add RAY_GPUS_PER_ACTOR=1"
        )
    if device.type == "cuda" and device.index not in (None, 0):
        raise ConfigError(f"DEVICE={name}: with ENGINE=ray, Ray picks each actor's GPU; use DEVICE=cuda")
    return str(device)


def _check_address(address: str) -> None:
    """Fail fast on an address where no server listens.

    ``ray.init`` retries a dead address for minutes; one TCP connection
    attempt says in a few seconds whether anything answers.
    """
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS={address}: expected host:port (e.g. 10.0.0.5:6379), ray://host:port or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as e:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({e.strerror or e}); "
            "start one with 'ray start --head' or fix the address"
        ) from None


def _quiet_ray() -> None:
    """Keep Ray's Python loggers to errors: the job reports its progress itself."""
    import logging

    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _native_stderr_hidden():
    """Send what Ray's C++ core writes to file descriptor 2 to /dev/null meanwhile.

    The driver's core worker prints its own log lines there (a warning at
    every actor's start, ray-project/ray#53727), which no logging setting
    reaches; Ray keeps its full logs under its session folder
    (``/tmp/ray/session_latest/logs``) either way. Python's ``sys.stderr``
    (our progress, the summary, Python warnings) keeps going where it went.
    Setting ``RAY_BACKEND_LOG_LEVEL`` asks for Ray's lines, and gets them.
    """
    if os.environ.get("RAY_BACKEND_LOG_LEVEL"):
        yield
        return
    try:
        python_uses_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. a test's in-memory capture
        python_uses_fd2 = False
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    before = sys.stderr
    ours = None
    try:
        if python_uses_fd2:
            ours = os.fdopen(
                os.dup(saved), "w", buffering=1, encoding=before.encoding, errors=before.errors or "backslashreplace"
            )
            sys.stderr = ours
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        sys.stderr = before
        if ours is not None:
            ours.close()
        os.close(saved)
        os.close(devnull)


def _start_ray(ray, address: str | None) -> tuple[bool, str]:
    """Connect to ``address`` (or $RAY_ADDRESS), or start a local Ray for this run.

    Returns:
        ``(whether this run must shut Ray down, where it runs, in words)``.
    """
    import logging

    if ray.is_initialized():  # a library user's own session (and the tests' shared one)
        return False, "the Ray session already running in this process"
    _quiet_ray()
    env = os.environ.get("RAY_ADDRESS")
    target = address or env
    kwargs = {"logging_level": logging.ERROR, "log_to_driver": False}
    if target and target != "local":
        _check_address(target)
        try:
            ray.init(address=target, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            key = "RAY_ADDRESS" if address else "the RAY_ADDRESS environment variable"
            raise ConfigError(f"{key}={target}: cannot connect to a Ray cluster there ({_one_line(e)})") from None
        where = f"the Ray cluster at {target}" + ("" if address else " (from $RAY_ADDRESS)")
    else:
        # "local" even when another Ray runs on this machine: without RAY_ADDRESS the
        # run starts its own, as documented, instead of joining whatever it finds.
        ray.init(address="local", include_dashboard=False, **kwargs)
        where = "a local Ray started for this run"
    _quiet_ray()  # ray.init sets its loggers' levels again
    return True, where


def _parameters(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _block_rows(n: int, actors: int, batch_size: int) -> int:
    """Rows per Ray block: a whole number of batches, about four blocks per actor, at most ~64 rows.

    Ray Data hands whole blocks to actors and reports them back whole: large
    blocks leave actors idle at the end, make the progress jump and, when an
    actor is killed, are retried whole (their finished images are skipped,
    not redone); tiny ones cost a task each.
    """
    batches = max(1, math.ceil(n / (4 * actors * batch_size)))
    return batch_size * min(batches, max(1, 64 // batch_size))


def run_ray(cfg: dict, created: list[Path]) -> int:
    """Run the command line's job on Ray Data. Returns the exit status.

    The same plan as ``ENGINE=local`` (inputs, output names, resume rule,
    boxes), the same writes (``_write_outputs``, atomic) done by the actors,
    and the same report: ``failed (<stage>): ...`` lines, the failure CSV,
    the summary line and exit statuses 0, 1, 2, 3, 130.

    Args:
        cfg: The parsed command line (:func:`~face_segmentation_pytorch.cli.parse_args`).
        created: Folders this run creates are appended (``cli.run`` removes
            them again when they stay empty).
    """
    from ..files.progress import progress_bar

    ray = _import_ray()
    gpus_per_actor = float(cfg["RAY_GPUS_PER_ACTOR"] or 0)
    out_dir = folder_job.check_settings(cfg)
    device = _check_device(cfg, gpus_per_actor)
    if cfg["RAY_ADDRESS"] is not None:
        _check_address(cfg["RAY_ADDRESS"])  # before any work: a wrong address is a typo to fix
    plan = folder_job.plan_run(cfg, out_dir, created)  # the same plan and resume rule as ENGINE=local
    if folder_job.nothing_to_do(cfg, plan):
        return 0
    images, root, missing, kinds, stems = plan.images, plan.root, plan.missing, plan.kinds, plan.stems
    todo, skipped, user_boxes = plan.todo, plan.skipped, plan.user_boxes

    # Built once on the driver, on the CPU, before Ray starts: a wrong
    # setting or missing weights end here with the local engine's message and
    # exit status, the weights are downloaded once (into MODEL_PARAMS_DIR, for
    # the actors to find) and BACKEND=onnxruntime or openvino exports its graph once.
    # CUDA-only precisions are the actors' to check (the driver may have no GPU);
    # compiling is theirs to do.
    probe_precision = cfg["PRECISION"] if device == "cpu" else "fp32"
    probe = make_segmenter(cfg, "cpu", progress=cfg["PROGRESS"], precision=probe_precision, compile=False)
    weights_source, input_size, runtime = probe.weights_source, probe.input_size, probe.runtime
    del probe
    folder_job.record_settings(plan)
    # Actors get absolute paths: their working folder need not be ours.
    settings = {k: v for k, v in cfg.items() if v != _default(k) and not k.startswith("RAY_") and k != "ENGINE"}
    for key in ("MODEL_PARAMS_DIR", "WEIGHTS_FILE"):
        if settings.get(key):
            settings[key] = os.path.abspath(os.path.expanduser(settings[key]))
    print(start_line(cfg, plan, weights_source, device, input_size, runtime), file=sys.stderr, flush=True)

    cropping = cfg["CROP"] is not None or user_boxes is not None
    failures: list[tuple[Path, str, str]] = [(p, "read", r) for p, r in missing]
    no_face: list[Path] = []
    gallery_rows: dict[int, tuple] = {}
    finished: set[int] = set()
    done = 0
    interrupted = False
    engine_error: str | None = None
    shutdown = False
    start = time.perf_counter()
    bar = None
    with _native_stderr_hidden(), warnings.catch_warnings():
        # Ray's own Python warnings (deprecations, tuning hints) are Ray's internals too.
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        try:
            shutdown, where = _start_ray(ray, cfg["RAY_ADDRESS"])
            nodes = [
                (n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")
            ]
            actors, cpus = plan_actors(nodes, cfg["RAY_NUM_ACTORS"], gpus_per_actor)
            batches = math.ceil(len(todo) / cfg["BATCH_SIZE"])
            if actors > batches:  # more would wait idle, each holding a copy of the network
                actors, cpus = plan_actors(nodes, batches, gpus_per_actor)
            cpus_total = sum(c for c, _ in nodes)
            print(
                f"face_segmentation_pytorch: {where} ({cpus_total:g} CPUs"
                + (f", {sum(g for _, g in nodes):g} GPUs" if gpus_per_actor else "")
                + f"): {folder_job.plural(actors, 'actor')} of {cpus:g} CPUs"
                + (f" and {gpus_per_actor:g} GPUs" if gpus_per_actor else "")
                + f", batch size {cfg['BATCH_SIZE']}",
                file=sys.stderr,
                flush=True,
            )
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # ours below, not Ray Data's
            if hasattr(ctx, "print_on_execution_start"):
                ctx.print_on_execution_start = False
            gallery_from = set(todo[:_GALLERY_CANDIDATES]) if cfg["GALLERY"] else set()
            abs_paths = {i: os.path.abspath(images[i]) for i in todo}
            rows = [
                {
                    "i": i,
                    "path": abs_paths[i],
                    "stem": os.path.abspath(stems[i]),
                    "boxes": json.dumps(user_boxes[i]) if user_boxes is not None else "",
                    "gallery": i in gallery_from,
                }
                for i in todo
            ]
            bs = cfg["BATCH_SIZE"]
            per_block = _block_rows(len(rows), actors, bs)
            blocks = max(1, math.ceil(len(rows) / per_block))
            # Ray 2.9 calls it parallelism; later releases override_num_blocks.
            name = "override_num_blocks" if "override_num_blocks" in _parameters(ray.data.from_items) else "parallelism"
            ds = ray.data.from_items(rows, **{name: blocks})
            results = segment_dataset(
                ds, settings, num_actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus, batch_size=bs
            )
            # Ray starts the actors; each then threads its own torch the way the
            # plan says (segment_dataset passes threads for the CPU share).
            start = time.perf_counter()
            bar = progress_bar(len(todo), desc="segmenting", unit="img", enabled=cfg["PROGRESS"])
            try:
                for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                    for j in range(len(batch["i"])):
                        i = int(batch["i"][j])
                        if i in finished:  # a retried batch's second report of the same image
                            continue
                        finished.add(i)
                        # As jobs.local.run_local: an image that ran counts for "no face" and the
                        # gallery even when its write then failed.
                        if cropping and int(batch["faces"][j]) == 0:
                            no_face.append(images[i])
                        if batch["gallery"][j]:
                            gallery_rows[i] = pickle.loads(batch["gallery"][j])
                        if batch["status"][j] == "done":
                            done += 1
                        else:
                            # The actor saw the absolute path; report the path as the user gave it.
                            reason = str(batch["reason"][j]).replace(abs_paths[i], str(images[i]))
                            failures.append((images[i], str(batch["stage"][j]), reason))
                        bar.update(1)
            except KeyboardInterrupt:
                interrupted = True
            except Exception as e:  # noqa: BLE001  Ray's errors (a lost node, actors that keep dying)
                if isinstance(e, ConfigError):
                    raise
                engine_error = _one_line(e)
        finally:
            if bar is not None:
                bar.close()
            if shutdown:
                try:
                    ray.shutdown()  # stops the actors: no writer of this job runs after this
                except KeyboardInterrupt:
                    interrupted = True
            # A writer killed mid-write (an actor Ray replaced, Ctrl-C) leaves its
            # temporary file; the final names only ever hold whole files.
            remove_stale_partials(stems, kinds)
    elapsed = time.perf_counter() - start

    if engine_error is not None:
        print(f"error: the Ray job stopped: {engine_error}", file=sys.stderr)
        for i in todo:
            if i not in finished:
                failures.append((images[i], "engine", f"not run: the Ray job stopped ({engine_error})"))

    if gallery_rows:
        folder_job.write_gallery(cfg, [gallery_rows[i] for i in sorted(gallery_rows)[:_GALLERY_ROWS]], failures)

    return folder_job.report_run(
        cfg,
        out_dir,
        root,
        done=done,
        skipped=skipped,
        failures=failures,
        no_face=no_face,
        cropping=cropping,
        elapsed=elapsed,
        interrupted=interrupted,
        resumable=interrupted or engine_error is not None,
    )
