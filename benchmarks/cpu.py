"""CPU speed in one run: the package against OpenVINO and ONNX Runtime, fp32 and bf16, both families.

Measures, on this machine, in one process and one run (random weights, the
same input for every row):

1. **Forward** of LinkNet34 (256x256) and FCN-8s (500x500) at batch 1 and 8:
   the package through ``FaceSegmenter`` (``PRECISION=fp32``, exact, and
   ``PRECISION=bf16``), the package's network under ``torch.compile`` with
   inductor's weight freezing (``--compile``), ONNX Runtime and OpenVINO on a
   plain ONNX export of the same model (fp32; OpenVINO also with its bf16
   inference precision), the package with ``BACKEND=openvino`` (the same OpenVINO
   behind ``FaceSegmenter``, its precision stated), OpenCV's DNN module on the
   caffemodel (FCN-8s, batch 1).
   Timed in blocks of about ``--block`` seconds, the variants' blocks alternating
   round by round with a ``--pause`` between blocks (a runtime's threads left
   spinning would slow the next). Per row: ms per image (median block, fastest
   block), effective TFLOP/s (the dense network's multiply-adds x 2 per image
   over the time), and against the package's fp32 output: the largest
   probability difference and the mask pixels that differ. Masks are cut at the
   median of the fp32 probabilities (half the pixels face), the hardest
   threshold for a random net: most pixels lie near it.
2. **Threads**: a LinkNet34 fp32 forward loop in fresh processes with OpenMP's
   wait policy PASSIVE (the package's default, ``runtime.py``), ACTIVE and
   OpenMP's own default (torch imported before the package), on the idle
   machine and with one core kept busy by a spinning process pinned to it.
3. **Video**: ``python -m face_segmentation_pytorch.video`` on a generated
   640x480 clip (LinkNet34; the torch and openvino backends in fp32, and in bf16
   where the CPU has it), idle and with
   one core busy, against a forward-only loop in the same state.
4. ``--layers``: oneDNN's direct 3x3 convolution against Winograd F(2x2, 3x3)
   (``kernels.winograd_f2_conv3x3``) at LinkNet34's encoder shapes, and the
   LinkNet34 fast path with and without Winograd, at this run's thread count
   (``--threads 1``: as the package uses Winograd, on one thread only).

Rows the CPU cannot run are listed with the reason (bf16 needs AVX-512 BF16 or
AMX; OpenVINO says which precision it picked). Prints markdown tables and
writes everything to ``--json``.

    python benchmarks/cpu.py [--families linknet34,fcn8s] [--batches 1,8] [--rounds 5]
        [--compile linknet34] [--sections forward,threads,video] [--layers] [--json cpu-benchmark.json]

Needs the test requirements (onnxruntime, OpenCV, protobuf, PyAV) and
``pip install openvino`` for the OpenVINO rows (left out with a note otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import face_segmentation_pytorch  # noqa: F401  (before torch: the package's OpenMP and huge-page defaults)

ROOT = Path(__file__).resolve().parents[1]
#: CPU features that decide which rows can run fast.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
SIZES = {"linknet34": 256, "fcn8s": 500}
SAMPLES = ("grace_hopper.jpg", "astronaut.jpg", "camera.png")


# --------------------------------------------------------------------------
# The machine.


def cpu_info() -> dict:
    """Model name, the :data:`FLAGS` it has, cores this process may use, load average."""
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "flags": [f for f in FLAGS if f in flags], "cores": cores, "load": load()}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name, mod in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("opencv", "cv2")):
        try:
            out[name] = __import__(mod).__version__
        except ImportError:
            out[name] = None
    return out


@contextlib.contextmanager
def busy_core():
    """One core kept busy by a spinning process pinned to it (the last core this process may use)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(spinner.pid, {max(os.sched_getaffinity(0))})
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        spinner.kill()
        spinner.wait()


# --------------------------------------------------------------------------
# Models and inputs (random weights, made the same way for every runtime).


def random_linknet():
    """LinkNet34 with random weights and BatchNorm statistics (``benchmarks/video.py``'s)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from video import random_linknet as make

    return make().eval()


def random_fcn8s(folder: Path):
    """The published FCN-8s topology with random weights (bilinear deconvolutions, the deploy's
    scales), written as a caffemodel for OpenCV and read back by the package's converter."""
    sys.path.insert(0, str(ROOT / "tests"))
    from caffe_writer import random_layers, write_caffemodel

    from face_segmentation_pytorch import FaceSegmentationNet
    from face_segmentation_pytorch.formats.caffe import load_caffemodel_as_statedict

    caffemodel = folder / "fcn8s.caffemodel"
    write_caffemodel(caffemodel, random_layers(21, 1, seed=0, fixed="deploy"))
    (folder / "deploy.prototxt").write_text((ROOT / "tests/fixtures/face_seg_fcn8s_deploy.prototxt").read_text())
    return FaceSegmentationNet.from_state_dict(load_caffemodel_as_statedict(caffemodel)).eval()


def make_model(family: str, folder: Path):
    return random_linknet() if family == "linknet34" else random_fcn8s(folder)


def make_inputs(model, batch: int, size: int):
    """``batch`` sample photos (mirrored copies past the three), prepared as the package prepares them."""
    import numpy as np
    import torch

    from face_segmentation_pytorch.files.imageio import load_image
    from face_segmentation_pytorch.segmentation.preprocess import prepare_input
    from face_segmentation_pytorch.weights.families import family_of_model

    prep = family_of_model(model).preprocessing_of(model)
    images = [np.asarray(load_image(ROOT / "assets/samples" / name)) for name in SAMPLES]
    batch_imgs = [images[i % 3] if (i // 3) % 2 == 0 else images[i % 3][:, ::-1].copy() for i in range(batch)]
    return torch.stack([prepare_input(img, prep, size=size) for img in batch_imgs])


def dense_flops(model, x) -> float:
    """Multiply-adds x 2 per image of every convolution of the dense network (the common yardstick)."""
    import torch
    from torch import nn

    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels * mod.out_channels // mod.groups
        pixels = (
            inp[0].shape[-2] * inp[0].shape[-1]
            if isinstance(mod, nn.ConvTranspose2d)
            else out.shape[-2] * out.shape[-1]
        )
        total += 2.0 * k * pixels

    fast = getattr(model, "fast_inference", None)
    model.fast_inference = False
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
        model.fast_inference = fast
    return total


# --------------------------------------------------------------------------
# The variants. Each setup returns a function of the prepared batch giving
# (N, H, W) face probabilities, or raises Skip with the reason.


class Skip(Exception):
    """This CPU or installation cannot run the row (the message says why)."""


def package(model, precision: str, threads: int):
    """The package through FaceSegmenter: its model preparation, precision rules and forward."""
    import face_segmentation_pytorch as fsp

    try:
        seg = fsp.FaceSegmenter(model, device="cpu", threshold=None, precision=precision, progress=False)
    except ValueError as e:
        raise Skip(str(e).split(";")[0]) from None
    return seg._forward


def package_openvino(model, precision: str, threads: int):
    """The package with ``BACKEND=openvino``: ``FaceSegmenter(backend="openvino")``, its precision stated."""
    import face_segmentation_pytorch as fsp
    from face_segmentation_pytorch.errors import FaceSegmentationError

    try:
        seg = fsp.FaceSegmenter(
            model, device="cpu", threshold=None, precision=precision, backend="openvino", progress=False
        )
    except (ValueError, FaceSegmentationError) as e:
        raise Skip(str(e).split(";")[0]) from None
    return seg._forward


def compiled(model, precision: str, threads: int):
    """The package's prepared network under ``torch.compile`` with inductor's weight freezing."""
    import torch

    import face_segmentation_pytorch as fsp

    try:
        seg = fsp.FaceSegmenter(model, device="cpu", threshold=None, precision=precision, progress=False)
    except ValueError as e:
        raise Skip(str(e).split(";")[0]) from None
    net = torch.compile(seg.model, options={"freezing": True}, dynamic=False)
    dtype = seg.dtype

    def forward(x):
        with torch.no_grad():
            return seg.family.forward_pmap(net, x.to(dtype), None).float()

    return forward


def onnxruntime(model, precision: str, threads: int, onnx_path: Path, spinning: bool = True):
    """ONNX Runtime's CPU provider; ``spinning=False`` lets its threads sleep between operators,
    as the package's OpenMP threads do (its default spins, which costs much on a busy machine)."""
    if precision != "fp32":
        raise Skip("ONNX Runtime's CPU provider has no bfloat16 convolutions")
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    import torch

    from face_segmentation_pytorch.weights.families import family_of_model

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    family = family_of_model(model)

    def forward(x):
        out = session.run(None, {"data": x.numpy()})[0]
        return family.logits_to_pmap(torch.from_numpy(out), None)

    return forward


def openvino(model, precision: str, threads: int, onnx_path: Path, batch: int, size: int):
    try:
        import openvino as ov
    except ImportError:
        raise Skip("openvino is not installed (pip install openvino)") from None
    import torch

    from face_segmentation_pytorch.weights.families import family_of_model

    core = ov.Core()
    want = {"fp32": "f32", "bf16": "bf16"}[precision]
    if want == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise Skip("OpenVINO reports no native bfloat16 on this CPU")
    net = core.read_model(str(onnx_path))
    net.reshape([batch, 3, size, size])  # a static shape, as OpenVINO runs fastest
    config = {"INFERENCE_PRECISION_HINT": want, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    exe = core.compile_model(net, "CPU", config)
    got = exe.get_property("INFERENCE_PRECISION_HINT")
    if got != {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[want]:
        raise Skip(f"OpenVINO picked {got.get_type_name()} instead of {want}")
    request = exe.create_infer_request()
    family = family_of_model(model)

    def forward(x):
        out = request.infer({0: x.numpy()})
        return family.logits_to_pmap(torch.from_numpy(next(iter(out.values())).copy()), None)

    return forward


def opencv(model, precision: str, threads: int, folder: Path):
    if precision != "fp32":
        raise Skip("OpenCV's DNN module runs fp32 on the CPU")
    import cv2
    import torch

    from face_segmentation_pytorch.models.fcn8s import scores_to_pmap

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromCaffe(str(folder / "deploy.prototxt"), str(folder / "fcn8s.caffemodel"))

    def forward(x):
        net.setInput(x.numpy())
        return scores_to_pmap(torch.from_numpy(net.forward("score")), None)

    return forward


def variants(family: str, batch: int, args) -> list[tuple[str, str, object]]:
    """(row name, precision, setup) for one family and batch size, in the order they alternate."""
    rows = [("package", "fp32", package), ("package", "bf16", package)]
    if family in args.compile:
        rows += [
            ("package, torch.compile (freezing)", "fp32", compiled),
            ("package, torch.compile (freezing)", "bf16", compiled),
        ]
    rows += [
        ("ONNX Runtime", "fp32", "onnxruntime"),
        ("ONNX Runtime, spinning off", "fp32", "onnxruntime_passive"),
        ("ONNX Runtime", "bf16", "onnxruntime"),
        ("OpenVINO", "fp32", "openvino"),
        ("OpenVINO", "bf16", "openvino"),
        ("package, BACKEND=openvino", "fp32", package_openvino),
        ("package, BACKEND=openvino", "bf16", package_openvino),
    ]
    if family == "fcn8s" and batch in args.opencv_batches:
        rows.append(("OpenCV DNN (caffemodel)", "fp32", "opencv"))
    return rows


# --------------------------------------------------------------------------
# Timing.


def time_blocks(fns: dict, x, args, cpu: dict | None = None) -> dict[str, list[float]]:
    """Seconds per image of each function: blocks of about ``args.block`` s, alternating, paused between.

    ``cpu``, when given, receives each block's process CPU seconds per image (all
    threads): the work itself, which other load does not inflate, except that a
    runtime whose threads spin counts its spinning too.
    """
    n = x.shape[0]
    repeats = {}
    for name, fn in fns.items():  # warm-up, and the repeats that fill a block
        t = time.perf_counter()
        fn(x)
        repeats[name] = max(1, round(args.block / max(time.perf_counter() - t, 1e-4)))
        time.sleep(args.pause)
    times = {name: [] for name in fns}
    for r in range(args.rounds):
        for name, fn in fns.items():
            fn(x)  # once untimed: caches and pages after the other runtimes ran
            t, c = time.perf_counter(), time.process_time()
            for _ in range(repeats[name]):
                fn(x)
            times[name].append((time.perf_counter() - t) / repeats[name] / n)
            if cpu is not None:
                cpu.setdefault(name, []).append((time.process_time() - c) / repeats[name] / n)
            time.sleep(args.pause)
        print(f"  round {r + 1}/{args.rounds} done (load {load()[0] if load() else '-'})", file=sys.stderr)
    return times


def compare(pmap, ref) -> tuple[float, float]:
    """(largest probability difference, fraction of mask pixels that differ) against ``ref``."""
    import torch

    cut = float(torch.quantile(ref.flatten()[:: max(1, ref.numel() // 2**20)].double(), 0.5))
    diff = float((pmap.double() - ref.double()).abs().max())
    return diff, float(((pmap > cut) != (ref > cut)).double().mean())


def bench_family(family: str, args, tmp: Path) -> list[dict]:
    """Every row of one family: set up per batch size, timed together, torn down before the next."""
    import torch

    from face_segmentation_pytorch.export import export_onnx

    size = SIZES[family]
    model = make_model(family, tmp)
    onnx_path = export_onnx(model, tmp / f"{family}.onnx")
    threads = torch.get_num_threads()
    rows = []
    for batch in args.batches:
        x = make_inputs(model, batch, size)
        flops = dense_flops(model, x)
        fns, firsts, batch_rows = {}, {}, []
        for name, precision, setup in variants(family, batch, args):
            key = f"{name} {precision}"
            row = {"family": family, "size": size, "batch": batch, "variant": name, "precision": precision, "key": key}
            batch_rows.append(row)
            try:
                fn = make_runner(setup, model, precision, threads, onnx_path, batch, size, tmp)
                with torch.inference_mode():
                    firsts[key] = fn(x).float()
                fns[key] = fn
            except Skip as e:
                row["skipped"] = str(e)
                print(f"{family} batch {batch}: {key}: not run ({e})", file=sys.stderr)
        print(f"{family} batch {batch}: timing {len(fns)} variants", file=sys.stderr)
        cpu = {}
        with torch.inference_mode():
            times = time_blocks(fns, x, args, cpu)
        ref = firsts["package fp32"]
        for row in batch_rows:
            key = row.pop("key")
            if key in fns:
                med = statistics.median(times[key])
                pdiff, mask = compare(firsts[key], ref)
                row.update(
                    ms=1000 * med,
                    ms_fastest=1000 * min(times[key]),
                    ms_blocks=[1000 * t for t in times[key]],
                    cpu_ms=1000 * statistics.median(cpu[key]),
                    tflops=flops / med / 1e12,
                    max_pmap_diff=pdiff,
                    mask_diff=mask,
                )
        rows += batch_rows
        del fns, firsts, x
        gc.collect()
    return rows


def make_runner(setup, model, precision, threads, onnx_path, batch, size, folder):
    if setup in ("onnxruntime", "onnxruntime_passive"):
        return onnxruntime(model, precision, threads, onnx_path, spinning=setup == "onnxruntime")
    if setup == "openvino":
        return openvino(model, precision, threads, onnx_path, batch, size)
    if setup == "opencv":
        return opencv(model, precision, threads, folder)
    return setup(model, precision, threads)


# --------------------------------------------------------------------------
# Threads and the video command, in fresh processes (OpenMP reads its settings once).

_FORWARD_CHILD = r"""
import json, os, sys, time
if os.environ.get("FSP_BENCH_TORCH_FIRST"):
    import torch  # before the package: its OMP_WAIT_POLICY default does not apply
sys.path.insert(0, {bench!r})
import face_segmentation_pytorch as fsp, torch
from video import random_linknet
seg = fsp.FaceSegmenter(
    random_linknet(), device="cpu", threshold=None, precision={precision!r}, backend={backend!r}, progress=False
)
x = torch.randn(1, 3, 256, 256)
with torch.inference_mode():
    for _ in range(3):
        seg._forward(x)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < {seconds}:
        seg._forward(x)
        n += 1
print(json.dumps({{"ms": 1000 * (time.perf_counter() - t) / n, "policy": os.environ.get("OMP_WAIT_POLICY")}}))
"""


def child_forward_ms(policy: str, precision: str = "fp32", seconds: float = 6.0, backend: str = "torch") -> float:
    """ms per LinkNet34 frame in a fresh process with OpenMP wait ``policy`` ("default": OpenMP's own)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy == "default":
        env["FSP_BENCH_TORCH_FIRST"] = "1"
    else:
        env["OMP_WAIT_POLICY"] = policy
    code = _FORWARD_CHILD.format(bench=str(ROOT / "benchmarks"), precision=precision, seconds=seconds, backend=backend)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms"]


def bench_threads(args) -> list[dict]:
    """Forward ms per policy, idle and with one core busy, alternating."""
    policies = ("PASSIVE", "ACTIVE", "default")
    got = {(p, s): [] for p in policies for s in ("idle", "busy")}
    for r in range(args.thread_rounds):
        for p in policies:
            got[p, "idle"].append(child_forward_ms(p))
            time.sleep(args.pause)
            with busy_core():
                got[p, "busy"].append(child_forward_ms(p))
            time.sleep(args.pause)
        print(f"threads: round {r + 1}/{args.thread_rounds} done", file=sys.stderr)
    return [
        {
            "policy": p,
            "idle_ms": statistics.median(got[p, "idle"]),
            "busy_ms": statistics.median(got[p, "busy"]),
            "idle_runs": got[p, "idle"],
            "busy_runs": got[p, "busy"],
        }
        for p in policies
    ]


def run_video(clip: Path, weights: Path, out: Path, precision: str, backend: str = "torch") -> dict:
    """The video command as a user runs it; its own summary line gives frames/s and network ms/frame."""
    cmd = [
        sys.executable,
        "-m",
        "face_segmentation_pytorch.video",
        f"SOURCE={clip}",
        f"OUT={out}",
        f"MODEL_PARAMS_DIR={weights}",
        "PROGRESS=false",
        f"PRECISION={precision}",
        f"BACKEND={backend}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(out.parent))
    m = re.search(r"(\d+) frames in [\d.]+ s, ([\d.]+) frames/s \(network (\d+) ms/frame\)", proc.stderr)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"video command failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return {"frames": int(m.group(1)), "fps": float(m.group(2)), "network_ms": float(m.group(3))}


def bench_video(args, tmp: Path, variants: list[tuple[str, str]]) -> list[dict]:
    """Command frames/s and a forward-only loop, idle and with one core busy, alternating,
    for each ``(backend, precision)``."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from video import make_clip

    w, h = (int(v) for v in args.video_size.lower().split("x"))
    clip = make_clip(tmp / "clip.avi", args.frames, (w, h))
    weights = tmp / "video_weights"
    weights.mkdir(exist_ok=True)
    torch.save(random_linknet().state_dict(), weights / "linknet_oneflow_model.pt")
    rows = []
    for backend, precision in variants:
        runs = {"idle": [], "busy": []}
        if backend != "torch":  # its one-off ONNX export beside the weights, before any timing
            run_video(clip, weights, tmp / "out.mp4", precision, backend)
        for r in range(args.video_repeats):
            for state in ("idle", "busy"):
                with busy_core() if state == "busy" else contextlib.nullcontext():
                    fwd = child_forward_ms("PASSIVE", precision, seconds=4.0, backend=backend)
                    cmd = run_video(clip, weights, tmp / "out.mp4", precision, backend)
                runs[state].append(dict(cmd, forward_fps=1000 / fwd))
                time.sleep(args.pause)
            print(f"video {backend} {precision}: round {r + 1}/{args.video_repeats} done", file=sys.stderr)
        idle_fps = statistics.median(r["fps"] for r in runs["idle"])
        for state, rs in runs.items():
            fps = statistics.median(r["fps"] for r in rs)
            fwd = statistics.median(r["forward_fps"] for r in rs)
            rows.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "state": state,
                    "fps": fps,
                    "forward_fps": fwd,
                    "of_forward": fps / fwd,
                    "of_idle": fps / idle_fps,
                    "runs": rs,
                }
            )
    return rows


# --------------------------------------------------------------------------
# Layers: Winograd F(2x2, 3x3) against oneDNN's direct convolution.


def bench_layers(args) -> dict:
    """Both ways at this run's thread count and, where that is more, on one thread."""
    import torch

    threads = torch.get_num_threads()
    rows = _layers_at(args, threads)
    if threads > 1:
        torch.set_num_threads(1)
        try:
            rows += _layers_at(args, 1)
        finally:
            torch.set_num_threads(threads)
    return {"rows": rows}


def _layers_at(args, threads: int) -> list[dict]:
    import torch

    from face_segmentation_pytorch.models import kernels, linknet

    cl = torch.channels_last
    fns, shapes = {}, []
    for c, s in ((64, 64), (128, 32), (256, 16), (512, 8)):
        x = torch.randn(1, c, s, s).contiguous(memory_format=cl)
        w = torch.randn(c, c, 3, 3) * (2.0 / (9 * c)) ** 0.5
        b = torch.randn(c) * 0.1
        packed = linknet._pack(w, b, (1, 1), (1, 1), (s, s))
        u = kernels.winograd_f2_weights(w)
        name = f"{c}x{c} channels at {s}x{s}"
        shapes.append(name)
        fns[f"{name}|direct"] = lambda x=x, p=packed: linknet._conv(x, p)
        fns[f"{name}|winograd"] = lambda x=x, u=u, b=b: kernels.winograd_f2_conv3x3(x, u, b)
    # (time_blocks divides by the batch it is given: one image here.)
    net = random_linknet()
    wino, direct = linknet.fast_inference_model(net), linknet.fast_inference_model(net)
    x = torch.randn(1, 3, 256, 256)
    # Both plans as for one thread (the only case the package uses Winograd in),
    # direct's without Winograd, then both timed at this run's thread count.
    with torch.inference_mode(), mock.patch.object(linknet, "_single_thread", lambda: True):
        with mock.patch.object(kernels, "WINOGRAD_F2_MIN_CHANNEL_PRODUCT", 1 << 40):
            direct(x)
        wino(x)
        fns["LinkNet34 fast path, 256x256|direct"] = lambda: direct(x)
        fns["LinkNet34 fast path, 256x256|winograd"] = lambda: wino(x)
        times = time_blocks({k: (lambda _x, f=f: f()) for k, f in fns.items()}, x, args)
    rows = []
    for name in [*shapes, "LinkNet34 fast path, 256x256"]:
        d, w = statistics.median(times[f"{name}|direct"]), statistics.median(times[f"{name}|winograd"])
        rows.append(
            {"layer": name, "threads": threads, "direct_ms": 1000 * d, "winograd_ms": 1000 * w, "speedup": d / w}
        )
    return rows


# --------------------------------------------------------------------------
# Tables.


def forward_table(rows: list[dict]) -> str:
    lines = [
        "| model | batch | runtime | precision | ms per image (median / fastest) | CPU ms per image | TFLOP/s "
        "| mask px != fp32 | max prob. diff |",
        "|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['family']} {r['size']}x{r['size']} | {r['batch']} | {r['variant']} | {r['precision']} |"
        if "skipped" in r:
            lines.append(f"{head} not run: {r['skipped']} | | | | |")
        else:
            lines.append(
                f"{head} {r['ms']:.1f} / {r['ms_fastest']:.1f} | {r['cpu_ms']:.1f} | {r['tflops']:.3f} "
                f"| {100 * r['mask_diff']:.3f}% | {r['max_pmap_diff']:.1e} |"
            )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """The issue's targets, as ratios within this run (batch 1)."""
    ms = {(r["family"], r["batch"], r["variant"], r["precision"]): r["ms"] for r in rows if "ms" in r}
    out = []
    for fam in SIZES:
        for b in sorted({r["batch"] for r in rows}):
            mine = ms.get((fam, b, "package", "fp32"))
            for peer, prec in (("ONNX Runtime", "fp32"), ("OpenVINO", "fp32"), ("OpenCV DNN (caffemodel)", "fp32")):
                if mine and (fam, b, peer, prec) in ms:
                    out.append(f"{fam} batch {b}: package fp32 is {ms[fam, b, peer, prec] / mine:.2f}x {peer} {prec}")
            mine16 = ms.get((fam, b, "package", "bf16"))
            if mine16 and (fam, b, "OpenVINO", "bf16") in ms:
                out.append(
                    f"{fam} batch {b}: package bf16 is {ms[fam, b, 'OpenVINO', 'bf16'] / mine16:.2f}x OpenVINO bf16"
                )
            if mine16 and mine:
                out.append(f"{fam} batch {b}: package bf16 is {mine / mine16:.2f}x package fp32")
    return out


def threads_table(rows: list[dict]) -> str:
    lines = [
        "| OpenMP wait policy | ms per frame | one core busy: ms per frame | busy / not busy time |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "PASSIVE": "PASSIVE (the package's default)",
        "ACTIVE": "ACTIVE",
        "default": "unset (OpenMP's default; torch imported first)",
    }
    for r in rows:
        lines.append(
            f"| {names[r['policy']]} | {r['idle_ms']:.1f} | {r['busy_ms']:.1f} | {r['busy_ms'] / r['idle_ms']:.2f} |"
        )
    return "\n".join(lines)


def video_table(rows: list[dict], size: str) -> str:
    lines = [
        f"| video command, {size}, LinkNet34: BACKEND, PRECISION | state | frames/s end to end | forward-only frames/s | of forward rate | of the rate without it |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.get('backend', 'torch')} {r['precision']} | {'one core busy' if r['state'] == 'busy' else 'no busy process'} | {r['fps']:.1f} | "
            f"{r['forward_fps']:.1f} | {r['of_forward']:.2f} | {r['of_idle']:.2f} |"
        )
    return "\n".join(lines)


def layers_table(data: dict) -> str:
    lines = [
        "| 3x3 layer, batch 1 | threads | direct (oneDNN) ms | Winograd F(2x2, 3x3) ms | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['layer']} | {r['threads']} | {r['direct_ms']:.2f} | {r['winograd_ms']:.2f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="linknet34,fcn8s")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5, help="timed blocks per row (alternating)")
    ap.add_argument("--block", type=float, default=1.5, help="seconds per timed block (at least one call)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between blocks")
    ap.add_argument("--compile", default="linknet34", help="families with torch.compile rows ('none': none)")
    ap.add_argument("--opencv-batches", default="1", help="batch sizes with the OpenCV row (FCN-8s)")
    ap.add_argument("--sections", default="forward,threads,video")
    ap.add_argument("--thread-rounds", type=int, default=3)
    ap.add_argument("--video-repeats", type=int, default=2)
    ap.add_argument("--frames", type=int, default=150, help="frames of the generated clip")
    ap.add_argument("--video-size", default="640x480")
    ap.add_argument("--layers", action="store_true", help="also time Winograd F(2x2, 3x3) against direct per layer")
    ap.add_argument(
        "--threads", type=int, default=0, help="threads of every runtime in the forward section (0: torch's default)"
    )
    ap.add_argument("--json", default="cpu-benchmark.json")
    args = ap.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.compile = [] if args.compile == "none" else args.compile.split(",")
    args.opencv_batches = [int(b) for b in args.opencv_batches.split(",") if b]
    args.sections = [s for s in args.sections.split(",") if s]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch  # after the package (imported at the top): its runtime defaults apply

    if args.threads:
        torch.set_num_threads(args.threads)

    from face_segmentation_pytorch.segmentation.precision import _cpu_has_native_bf16

    info = cpu_info()
    result = {
        "date": datetime.date.today().isoformat(),
        "cpu": info,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "native_bf16": _cpu_has_native_bf16(),
        "args": {k: v for k, v in vars(args).items()},
    }
    head = (
        f"{result['date']}, {info['model']} ({info['cores']} cores; {', '.join(info['flags'])}); torch "
        f"{result['versions']['torch']}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={result['omp_wait_policy']}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if k not in ("torch", "python") and v)
        + f"; load average before: {info['load']}"
    )
    print(head)
    with tempfile.TemporaryDirectory(prefix="fsp_cpu_") as d:
        tmp = Path(d)
        if "forward" in args.sections:
            rows = []
            for family in args.families:
                rows += bench_family(family, args, tmp)
                gc.collect()
            result["forward"] = rows
            print("\n" + forward_table(rows) + "\n")
            result["ratios"] = ratios(rows)
            print("\n".join(result["ratios"]))
        if args.layers:
            result["layers"] = bench_layers(args)
            print("\n" + layers_table(result["layers"]))
        if "threads" in args.sections:
            result["threads_rows"] = bench_threads(args)
            print("\n" + threads_table(result["threads_rows"]))
        if "video" in args.sections:
            variants = [("torch", "fp32"), ("openvino", "fp32")]
            if result["native_bf16"]:
                variants += [("torch", "bf16"), ("openvino", "bf16")]
            result["video"] = bench_video(args, tmp, variants)
            print("\n" + video_table(result["video"], args.video_size))
            if not result["native_bf16"]:
                print("video with PRECISION=bf16: not run (this CPU has no native bfloat16)")
    result["load_after"] = load()
    print(f"\nload average after: {result['load_after']}")
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
