"""The local engine of the folder job: a thread or process pipeline on this machine.

Reading and writing run in worker threads or spawned worker processes
(:mod:`face_segmentation_pytorch.pipeline.workers`), the network in this
process; the plan and the writer are the folder job's (:mod:`.folder`).
"""

from __future__ import annotations

import glob
import sys
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from ..errors import ConfigError
from ..segmentation.backends import backend_device
from .folder import (
    check_settings,
    first_line,
    make_segmenter,
    nothing_to_do,
    plan_run,
    plural,
    record_settings,
    report_run,
    resolve_device,
    start_line,
    write_gallery,
)
from .settings import AUTO

__all__ = ["run_local"]


def run_local(cfg: dict, created: list[Path]) -> int:
    from ..files.progress import progress_bar
    from .workers import (
        BrokenProcessPool,
        Job,
        ProcessWorkers,
        ThreadWorkers,
        choose_pipeline,
        default_workers,
    )

    out_dir = check_settings(cfg)
    # ONNX Runtime and OpenVINO run on the CPU: without DEVICE they do not pick CUDA.
    device = resolve_device(backend_device(cfg["BACKEND"], cfg["DEVICE"]))
    plan = plan_run(cfg, out_dir, created)
    if nothing_to_do(cfg, plan):
        return 0
    images, root, missing, kinds, stems = plan.images, plan.root, plan.missing, plan.kinds, plan.stems
    todo, skipped, user_boxes = plan.todo, plan.skipped, plan.user_boxes
    pipeline = choose_pipeline(cfg["PIPELINE"], device.type)
    n_workers = default_workers(pipeline) if cfg["WORKERS"] == AUTO else cfg["WORKERS"]
    # Worker processes start before the weights load, so the two overlap.
    workers = (ProcessWorkers if pipeline == "processes" else ThreadWorkers)(n_workers)
    try:
        segmenter = make_segmenter(cfg, device, progress=cfg["PROGRESS"])
        record_settings(plan)
    except BaseException:
        workers.shutdown()
        raise
    print(
        start_line(cfg, plan, segmenter.weights_source, device, segmenter.input_size, segmenter.runtime)
        + f"; images read and written by {n_workers} worker process{'es' * (n_workers > 1)}"
        * (pipeline == "processes"),
        file=sys.stderr,
    )

    cropping = cfg["CROP"] is not None or user_boxes is not None
    masks_only = cfg["MASK_THRESHOLD"] is not None  # then no output shows the probabilities
    no_face: list[Path] = []
    failures: list[tuple[Path, str, str]] = [(p, "read", r) for p, r in missing]
    gallery_rows: list = []
    gallery_asked = 0
    done = 0
    bs = cfg["BATCH_SIZE"]
    batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
    job = Job(
        segmenter.preparer,
        segmenter.assembler,
        kinds,
        per_face=cfg["PER_FACE"],
        max_image_pixels=cfg["MAX_IMAGE_PIXELS"],
    )
    workers.bind(job)

    def items(batch: list[int]):
        return [(i, images[i], user_boxes[i] if user_boxes is not None else None) for i in batch]

    interrupted = False
    finished: set[int] = set()  # images done or failed
    sent = 0  # batches of the current pump() whose reads were submitted
    any_read = False  # a worker has returned something: they can start
    start = time.perf_counter()
    bar = progress_bar(len(todo), desc="segmenting", unit="img", enabled=cfg["PROGRESS"])

    def fail(i: int, stage: str, reason: str) -> None:
        failures.append((images[i], stage, reason))
        finished.add(i)
        bar.update(1)

    def succeed(i: int) -> None:
        nonlocal done
        done += 1
        finished.add(i)
        bar.update(1)

    def outputs_exist(i: int) -> bool:
        return all(stems[i].with_name(stems[i].name + k).exists() for k in kinds)

    def pump(batch_list: list[list[int]]) -> None:
        """Read, run and write these batches, the three overlapping.

        Reading runs a few batches ahead of the network and writing behind it,
        in the workers. On CUDA the device computes batch k while this process
        takes batch k+1 from the readers and launches it; only then does it
        wait for batch k's maps. A broken process pool propagates (the caller
        sorts out what was finished); Ctrl-C lets the writes in flight finish.
        """
        nonlocal sent, any_read
        reads: deque[tuple[list[int], Future]] = deque()
        writes: deque[tuple[int, Future]] = deque()
        launched = None  # (images, their Prepared, PendingMaps): on the device, not yet collected
        sent = 0

        def submit_read() -> None:
            nonlocal sent
            reads.append((batch_list[sent], workers.read(items(batch_list[sent]))))
            sent += 1

        def finish_writes(limit: int) -> None:
            # Bound the results held in memory; collect write failures in order.
            while len(writes) > limit:
                i, fut = writes[0]
                written = workers.result(fut)  # BrokenProcessPool propagates
                writes.popleft()
                if written.gallery_row is not None:
                    gallery_rows.append(written.gallery_row)
                if written.failure is not None:
                    fail(i, *written.failure)
                else:
                    succeed(i)

        def collect(batch) -> None:
            # The launched batch's maps (waits for the device), then its writes.
            nonlocal gallery_asked
            ids, prepared, pending = batch
            try:
                per_image = segmenter.split_maps(prepared, pending.result())
            except (RuntimeError, ValueError) as e:
                for i in ids:
                    fail(i, "inference", first_line(e))
                return
            for i, p, maps in zip(ids, prepared, per_image):
                if cropping and not p.faces:
                    no_face.append(images[i])
                row = bool(cfg["GALLERY"]) and gallery_asked < 16
                gallery_asked += row
                writes.append((i, workers.write(stems[i], p, maps, row)))
            finish_writes(2 * bs * n_workers)

        try:
            ahead = max(2, n_workers)
            while sent < len(batch_list) and len(reads) < ahead:
                submit_read()
            while reads or launched is not None:
                current = None
                if reads:
                    loaded = workers.result(reads[0][1])
                    any_read = True
                    reads.popleft()
                    if sent < len(batch_list):
                        submit_read()
                    ok = []
                    for i, item in loaded:
                        if isinstance(item, tuple):
                            fail(i, *item)
                        else:
                            ok.append((i, item))
                    if ok:
                        prepared = [p for _, p in ok]
                        try:
                            # Mask outputs need no probabilities: threshold on the device.
                            current = ([i for i, _ in ok], prepared, segmenter.start(prepared, masks_only=masks_only))
                        except (RuntimeError, ValueError) as e:
                            for i, _ in ok:
                                fail(i, "inference", first_line(e))
                if launched is not None:
                    collect(launched)
                launched = None
                if current is not None and not current[2].asynchronous:
                    collect(current)  # the CPU has computed it already: write it now
                else:
                    launched = current
            finish_writes(0)
        except KeyboardInterrupt:
            for _, fut in reads:
                fut.cancel()
            # Writes in flight finish (each is atomic), so what is on disk is whole.
            try:
                finish_writes(0)
            except (KeyboardInterrupt, BrokenProcessPool):
                pass
            raise

    def new_workers():
        w = (ProcessWorkers if pipeline == "processes" else ThreadWorkers)(n_workers)
        w.bind(job)
        return w

    def remove_partials(i: int) -> None:
        # Temporary files of a worker that died while writing (the pool's other
        # workers are gone too, so nothing else is writing them).
        stem = stems[i]
        patterns = [f".{glob.escape(stem.name + k)}.*.partial" for k in kinds]
        patterns.append(f".{glob.escape(stem.name)}__face[0-9]*__mask.png.*.partial")
        for pattern in patterns:
            for tmp in stem.parent.glob(pattern):
                tmp.unlink(missing_ok=True)

    try:
        remaining = batches
        while remaining:
            try:
                pump(remaining)
                break
            except BrokenProcessPool:
                pass
            # A worker process died (killed, out of memory, a crash in a
            # decoder): every image that was in flight is read, run and written
            # again one at a time in a new pool, so one that kills its worker
            # again is found and reported, and the rest are not lost.
            workers.shutdown()
            if not any_read:
                # Not an image's fault: they cannot run here (out of memory while
                # importing torch, a broken environment; their errors are above).
                raise ConfigError(
                    "PIPELINE=processes: the worker processes died before reading any image (see the lines "
                    "above); add PIPELINE=threads to read and write images in this process"
                ) from None
            in_flight, remaining = remaining[:sent], remaining[sent:]
            unfinished = [i for b in in_flight for i in b if i not in finished]
            for i in unfinished:
                remove_partials(i)
            print(
                f"face_segmentation_pytorch: a worker process died; retrying its {plural(len(unfinished), 'image')} "
                "one at a time",
                file=sys.stderr,
            )
            workers = new_workers()
            for i in unfinished:
                try:
                    pump([[i]])
                except BrokenProcessPool:
                    workers.shutdown()
                    remove_partials(i)
                    if i not in finished and outputs_exist(i):
                        succeed(i)  # written before its worker died; only the report was lost
                    elif i not in finished:
                        fail(
                            i,
                            "worker",
                            "a worker process died on this image twice (a crash while decoding it, or out of memory?)",
                        )
                    workers = new_workers()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        workers.shutdown()
        bar.close()
    elapsed = time.perf_counter() - start

    if gallery_rows:
        write_gallery(cfg, gallery_rows, failures)
    return report_run(
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
        resumable=interrupted,
    )
