"""Video command: ``python -m face_segmentation_pytorch.video SOURCE=clip.mp4 OUT=faces.mp4``.

Segments every frame of a video file, an image sequence or a camera, and
writes an overlay video (``OUT``), one mask per frame (``MASKS_DIR``) or shows
a window (``SHOW``). Keys are ``KEY=VALUE`` in the batch command's style
(:mod:`face_segmentation_pytorch.cli`); mistakes end with one ``error:`` line
and exit status 2, Ctrl-C closes the output (a playable file) and exits 130.
The Python API is :func:`face_segmentation_pytorch.pipeline.video.segment_video`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .cli import KEYS as _BATCH_KEYS
from .cli import _first_line, _plural, _resolve_device, check_precision_keys, make_segmenter
from .keys import Key, is_number, parse_dotlist
from .keys import help_text as keys_help_text
from .keys import is_int as _is_int
from .errors import EXIT_STATUSES, ConfigError, run_command

__all__ = ["main", "parse_args", "run", "KEYS"]

_AUTO = "auto"
PROG = "face_segmentation_pytorch.video"

KEYS: dict[str, Key] = {
    "SOURCE": Key(
        None,
        "what to segment (required): a video file (anything OpenCV reads: .mp4, .avi, .mov...), a glob "
        "pattern of images in name order such as 'frames/*.png', or a camera index such as 0",
    ),
    "OUT": Key(
        None,
        "write the drawn video here, same size and frame rate as the source; the suffix picks the codec: "
        ".mp4/.m4v/.mov mp4v, .avi MJPG (else XVID), .mkv MJPG; written as .<name>.partial<suffix> "
        "beside it and renamed at the end",
    ),
    "MASKS_DIR": Key(
        None,
        "also write one PNG per frame here, 000000.png, 000001.png...: the 0/255 mask, the feathered "
        "alpha with FEATHER, or the 8-bit probability heatmap with MASK_THRESHOLD=null",
    ),
    "SHOW": Key(False, "show the drawn frames in a window (needs a display and an OpenCV with GUI); any key stops"),
    "WEIGHTS": Key(
        "linknet34_oneflow",
        "which weights entry: linknet34_oneflow (real time on a CPU), linknet34_oneflow_demo, fcn8s_500, "
        "fcn8s_300_no_aug, fcn8s_500_port (FCN-8s: about 1 frame/s on a CPU; use a GPU)",
    ),
    "MODEL_PARAMS_DIR": Key(
        None,
        "folder with the weights (linknet_oneflow_model.pt / .safetensors / OneFlow folder, face_seg_fcn8s.pt...); "
        "downloaded there when missing; null: the cache folder (as the batch command)",
    ),
    "WEIGHTS_FILE": Key(None, "run the weights in this file with WEIGHTS' architecture and preprocessing"),
    "DEVICE": Key(None, "cpu, cuda or cuda:N; null: cuda when available, else cpu"),
    "BACKEND": Key("torch", "torch, or onnxruntime (CPU; the onnx extra)"),
    # The batch command's keys, unchanged: e.g. PRECISION=fp16 COMPILE=true on a GPU.
    "PRECISION": _BATCH_KEYS["PRECISION"],
    "COMPILE": _BATCH_KEYS["COMPILE"],
    "INPUT_SIZE": Key(
        _AUTO,
        "auto: the weights' input size (256 for LinkNet, 500 or 300 for FCN-8s); an int: that square size "
        "(LinkNet: a multiple of 32); null: the frame's own size",
    ),
    "MASK_THRESHOLD": Key(
        0.5, "face probability above which a pixel is face, in (0, 1); null: draw and write probabilities"
    ),
    "POSTPROCESS": Key(None, "steps applied to each mask: largest, fill_holes, smooth, full (comma-separated)"),
    "DILATE": Key(0, "grow (or, negative, shrink) each mask by N pixels; needs MASK_THRESHOLD"),
    "FEATHER": Key(0, "soften the mask's edge over R pixels (drawn and written as a soft alpha); needs MASK_THRESHOLD"),
    "SMOOTH": Key(
        0.0,
        "temporal smoothing s in [0, 1): the probability map becomes the moving average "
        "ema_t = (1 - s) * p_t + s * ema_{t-1} before thresholding; 0: off; 0.5 halves a one-frame flicker",
    ),
    "STYLE": Key(
        "overlay",
        "overlay: the face blended in red (the authors' render); fade: the background faded towards white "
        "(the OneFlow demo); cutout: the face on BACKGROUND",
    ),
    "BACKGROUND": Key("0,255,0", "cutout background colour, R,G,B in 0..255"),
    "COLOR": Key("255,0,0", "overlay colour, R,G,B in 0..255"),
    "MAX_FRAMES": Key(None, "stop after this many frames; null: the whole source (a camera: until Ctrl-C)"),
    "FPS": Key(None, "frame rate written in OUT; null: the source's (25 when it has none, e.g. an image sequence)"),
    "CODEC": Key(None, "a four-character code (mp4v, MJPG, XVID, avc1...) instead of the suffix's choice"),
    "PROGRESS": Key(True, "print frames/s on stderr while running (a line every few seconds when not a terminal)"),
}

_STRING_KEYS = (
    "SOURCE", "OUT", "MASKS_DIR", "WEIGHTS", "MODEL_PARAMS_DIR", "WEIGHTS_FILE", "DEVICE", "BACKEND",
    "PRECISION", "POSTPROCESS", "STYLE", "BACKGROUND", "COLOR", "CODEC",
)

USAGE = f"usage: python -m {PROG} SOURCE=<video, 'frames/*.png' or camera index> OUT=<result.mp4> [KEY=VALUE ...]"


def help_text() -> str:
    statuses = {
        0: "the whole source was processed (or MAX_FRAMES, or a key in the SHOW window)",
        1: "some frames failed (unreadable files in an image sequence, masks that could not be written)",
        2: EXIT_STATUSES[2],
        3: EXIT_STATUSES[3],
        130: "interrupted (Ctrl-C): OUT holds the frames done so far and plays",
    }
    return keys_help_text(
        USAGE,
        "Segment faces in every frame of a video, an image sequence or a camera.",
        KEYS,
        f"python -m {PROG} SOURCE=clip.mp4 OUT=faces.mp4 SMOOTH=0.5 STYLE=fade",
        statuses,
    )


def _parse_color(name: str, text) -> tuple[int, int, int]:
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = str(text).strip().strip("[]()").replace(" ", "").split(",")
    try:
        rgb = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ConfigError(f"{name}={text!r} is invalid: expected R,G,B with each in 0..255, e.g. {name}=0,255,0")
    return rgb  # type: ignore[return-value]


def parse_args(argv: list[str]) -> dict:
    """Parse ``KEY=VALUE`` arguments into a validated config dict.

    Raises:
        ConfigError: Unknown key (with a suggestion), malformed argument or invalid value.
    """
    # Colours hold commas: taken as text before omegaconf sees the rest.
    cfg = parse_dotlist(argv, KEYS, _STRING_KEYS, USAGE, verbatim=("BACKGROUND", "COLOR"))

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: {what}")

    if cfg["SOURCE"] is None:
        raise ConfigError(f"SOURCE is required: a video file, a glob of images or a camera index; {USAGE}")
    t = cfg["MASK_THRESHOLD"]
    need(t is None or (is_number(t) and 0 < t < 1), "MASK_THRESHOLD", "expected a number strictly between 0 and 1, or null")
    s = cfg["INPUT_SIZE"]
    need(s is None or s == _AUTO or (_is_int(s) and s >= 1), "INPUT_SIZE", "expected auto, null or a positive integer")
    need(cfg["BACKEND"] in ("torch", "onnxruntime"), "BACKEND", "expected torch or onnxruntime")
    need(cfg["STYLE"] in ("overlay", "fade", "cutout"), "STYLE", "expected overlay, fade or cutout")
    check_precision_keys(cfg, need)
    sm = cfg["SMOOTH"]
    need(is_number(sm) and 0 <= sm < 1, "SMOOTH", "expected a number in [0, 1) (0: off; e.g. 0.5)")
    mf = cfg["MAX_FRAMES"]
    need(mf is None or (_is_int(mf) and mf >= 1), "MAX_FRAMES", "expected null or an integer >= 1")
    fps = cfg["FPS"]
    need(fps is None or (is_number(fps) and 0 < fps <= 1000), "FPS", "expected null or a frame rate in (0, 1000]")
    for name in ("SHOW", "PROGRESS"):
        need(isinstance(cfg[name], bool), name, "expected true or false")
    need(_is_int(cfg["DILATE"]), "DILATE", "expected a whole number of pixels (negative shrinks)")
    need(_is_int(cfg["FEATHER"]) and cfg["FEATHER"] >= 0, "FEATHER", "expected a whole number of pixels >= 0")
    for name in ("DILATE", "FEATHER"):
        need(cfg[name] == 0 or t is not None, name, "works on masks: add MASK_THRESHOLD=0.5")
    if cfg["POSTPROCESS"] is not None:
        from .pipeline.postprocess import parse_steps

        parse_steps(cfg["POSTPROCESS"])
        need(t is not None, "POSTPROCESS", "post-processing works on masks: add MASK_THRESHOLD=0.5")
    cfg["BACKGROUND"] = _parse_color("BACKGROUND", cfg["BACKGROUND"])
    cfg["COLOR"] = _parse_color("COLOR", cfg["COLOR"])
    codec = cfg["CODEC"]
    need(codec is None or len(codec) == 4, "CODEC", "expected a four-character code such as mp4v or MJPG")
    if cfg["OUT"] is None and cfg["MASKS_DIR"] is None and not cfg["SHOW"]:
        raise ConfigError("nothing to write: give OUT=result.mp4, MASKS_DIR=<folder> or SHOW=true")
    wf = cfg["WEIGHTS_FILE"]
    if wf is not None and not Path(wf).expanduser().exists():
        raise ConfigError(f"WEIGHTS_FILE={wf}: no such file or folder; give the path of a weights file")
    return cfg


_WINDOW = "face_segmentation_pytorch"


def _open_window() -> None:
    """Open the SHOW window, or say in one line why there can be none."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError(
            "SHOW=true: there is no display here (DISPLAY is not set); write a video with OUT=result.mp4 "
            "instead, or run where a screen is attached"
        )
    try:
        cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise ConfigError(
            "SHOW=true: this OpenCV cannot open windows (opencv-python-headless has no GUI); "
            "install opencv-python for SHOW, or write a video with OUT=result.mp4"
        ) from None


class _Rate:
    """Frames/s on stderr: one rewritten line on a terminal, a line every
    ``every_s`` seconds otherwise (logs stay short)."""

    def __init__(self, total: int | None, enabled: bool, every_s: float | None = None) -> None:
        self.total, self.enabled = total, enabled
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.every = every_s if every_s is not None else (0.5 if self.tty else 5.0)
        self.start = self.last = time.perf_counter()
        self.n = 0
        self.network_s = 0.0
        self._shown = False

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        of = f" of {self.total}" if self.total else ""
        rate = f", {self.n / elapsed:.1f} frames/s" if elapsed > 0 and self.n else ""
        net = f" (network {1000 * self.network_s / self.n:.0f} ms/frame)" if self.n else ""
        return f"{PROG}: {self.n}{of} frames{rate}{net}"

    def update(self, network_s: float) -> None:
        self.n += 1
        self.network_s += network_s
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            if self.tty:
                print("\r" + self.line() + "   ", end="", file=sys.stderr, flush=True)
                self._shown = True
            else:
                print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._shown:
            print(file=sys.stderr)  # end the rewritten line
            self._shown = False


def _finish(close) -> BaseException | None:
    """Run a finishing step to its end even through further Ctrl-C presses
    (a half-closed video would not play); return the error it raised, if any."""
    while True:
        try:
            close()
            return None
        except KeyboardInterrupt:
            continue
        except Exception as e:  # noqa: BLE001 - reported by the caller
            return e


def run(cfg: dict) -> int:
    """Run the video job described by a parsed config. Returns the exit status."""
    from .pipeline.atomic import remove_empty_dirs
    from .pipeline.video import FOURCCS, open_source
    from .pipeline.weights import get_weights

    get_weights(cfg["WEIGHTS"])  # an unknown name is a mistake in the command: say so first
    device = _resolve_device(cfg["DEVICE"] if cfg["BACKEND"] != "onnxruntime" else cfg["DEVICE"] or "cpu")
    if cfg["SHOW"]:
        _open_window()
    out = Path(cfg["OUT"]).expanduser() if cfg["OUT"] else None
    if out is not None:
        if cfg["CODEC"] is None and out.suffix.lower() not in FOURCCS:
            raise ConfigError(
                f"OUT={out}: unknown video type {out.suffix or '(no suffix)'!r}; end the name with "
                f"{', '.join(FOURCCS)} (e.g. result.mp4), or give CODEC"
            )
        if out.is_dir():
            raise ConfigError(f"OUT={out}: is a folder; give a file name such as {out / 'result.mp4'}")
    created: list[Path] = []
    try:
        source = open_source(cfg["SOURCE"])
        try:
            return _run(cfg, device, source, out, created)
        finally:
            source.close()
    finally:
        remove_empty_dirs(created)


def _run(cfg, device, source, out, created) -> int:
    from .pipeline.atomic import ensure_writable_dir
    from .pipeline.video import DEFAULT_FPS, MaskSink, VideoSink, segment_video

    for key, folder in (("OUT", out.parent if out else None), ("MASKS_DIR", cfg["MASKS_DIR"])):
        if folder is None:
            continue
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{key}={cfg[key]}: {folder} is a file; give a folder path")
        try:
            created += ensure_writable_dir(folder)
        except OSError as e:
            raise ConfigError(
                f"{key}={cfg[key]}: cannot write in {folder} ({e.strerror or e}); choose a writable folder"
            ) from None
    # The batch command's segmenter from the keys this command shares with it.
    segmenter = make_segmenter(cfg, device, progress=cfg["PROGRESS"])
    fps = float(cfg["FPS"] or source.fps or DEFAULT_FPS)
    sink = None
    if out is not None:
        sink = VideoSink(
            out, (source.width, source.height), fps, codec=cfg["CODEC"], style=cfg["STYLE"],
            color=cfg["COLOR"], background=cfg["BACKGROUND"],
        )
    masks = MaskSink(Path(cfg["MASKS_DIR"]).expanduser()) if cfg["MASKS_DIR"] else None
    print(
        f"{PROG}: {source.spec} ({source.describe()}); weights {segmenter.weights_source}, device {device}"
        + (" (ONNX Runtime)" if cfg["BACKEND"] == "onnxruntime" else "")
        + f", input size {segmenter.input_size or 'native'}"
        + (f", precision {cfg['PRECISION']}" if cfg["PRECISION"] != "fp32" else "")
        + (f", smoothing {cfg['SMOOTH']}" if cfg["SMOOTH"] else ""),
        file=sys.stderr,
        flush=True,
    )
    total = source.frame_count
    if cfg["MAX_FRAMES"] is not None:
        total = min(total, cfg["MAX_FRAMES"]) if total else cfg["MAX_FRAMES"]
    rate = _Rate(total, cfg["PROGRESS"])
    interrupted = stopped_by_key = False
    failure: str | None = None
    frames = segment_video(source, segmenter, smooth=cfg["SMOOTH"], max_frames=cfg["MAX_FRAMES"])
    try:
        for frame in frames:
            shown = frame.shown
            rendered = None
            if cfg["SHOW"]:
                import cv2

                rendered = frame.render(cfg["STYLE"], color=cfg["COLOR"], background=cfg["BACKGROUND"])
                cv2.imshow(_WINDOW, rendered)
                if cv2.waitKey(1) != -1:
                    stopped_by_key = True
            try:
                if sink is not None:
                    sink.put(frame.bgr, shown, rendered)
                if masks is not None:
                    masks.put(frame.index, frame.pmap, frame.mask, frame.alpha)
            except (OSError, ValueError) as e:
                failure = f"writing failed: {_first_line(e)}"
                break
            rate.update(frame.network_s)
            if stopped_by_key:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _finish(frames.close)  # stops the reader thread
        rate.close()
    elapsed = time.perf_counter() - rate.start
    written = None
    if sink is not None:
        if failure is None:
            err = _finish(sink.finish)
            if err is not None:
                failure = f"writing {out} failed: {_first_line(err)}"
                _finish(sink.abort)
            else:
                written = out if sink.count else None
        else:
            _finish(sink.abort)
    mask_count = 0
    if masks is not None:
        err = _finish(masks.finish)
        if err is not None and failure is None:
            failure = f"writing masks failed: {_first_line(err)}"
        mask_count = masks.count
    if cfg["SHOW"]:
        import cv2

        cv2.destroyAllWindows()
    for path, reason in source.skipped:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
    n = rate.n
    summary = (
        f"{PROG}: "
        + ("interrupted; " if interrupted else "stopped by a key; " if stopped_by_key else "")
        + f"{_plural(n, 'frame')} in {elapsed:.1f} s"
        + (f", {n / elapsed:.1f} frames/s (network {1000 * rate.network_s / n:.0f} ms/frame)" if n and elapsed > 0 else "")
        + (f"; wrote {written} ({sink.codec}, {source.width}x{source.height}, {fps:.2f} fps)" if written else "")
        + (f"; {_plural(mask_count, 'mask')} in {cfg['MASKS_DIR']}" if masks is not None else "")
        + (f"; {len(source.skipped)} unreadable frames skipped" if source.skipped else "")
    )
    print(summary, file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failure is not None or source.skipped else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(
        argv, help_text, lambda: run(parse_args(argv)), f"{PROG}: interrupted before any frame was processed"
    )

if __name__ == "__main__":
    sys.exit(main())
