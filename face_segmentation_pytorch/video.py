"""Video command: ``python -m face_segmentation_pytorch.video SOURCE=clip.mp4 OUT=faces.mp4``.

Segments every frame of a video file, an image sequence or a camera, and
writes an overlay video (``OUT``), one mask per frame (``MASKS_DIR``) or shows
a window (``SHOW``). Files are read and written with FFmpeg's libraries (PyAV,
the ``[video]`` extra): the sound is kept, every frame keeps its timestamp and
``.mp4`` is H.264 that browsers play (docs/video.md). Keys are ``KEY=VALUE`` in
the batch command's style (:mod:`face_segmentation_pytorch.cli`); mistakes end
with one ``error:`` line and exit status 2, a source is never written over, and
Ctrl-C closes the output (a playable file; further presses wait for it) and
exits 130. The Python API is
:func:`face_segmentation_pytorch.pipeline.video.segment_video`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import EXIT_STATUSES, ConfigError, run_command

# The batch job's shared pieces (keys, segmenter, device) come from the layer below
# the commands: commands do not import each other (tests/test_import_graph.py).
from .jobs.folder import check_backend_keys, check_precision_keys, make_segmenter
from .jobs.folder import first_line as _first_line
from .jobs.folder import plural as _plural
from .jobs.folder import resolve_device as _resolve_device
from .jobs.settings import KEYS as _BATCH_KEYS
from .keys import Key, is_number, parse_dotlist
from .keys import help_text as keys_help_text
from .keys import is_int as _is_int
from .segmentation.backends import backend_device

__all__ = ["main", "parse_args", "run", "KEYS"]

_AUTO = "auto"
PROG = "face_segmentation_pytorch.video"


KEYS: dict[str, Key] = {
    "SOURCE": Key(
        None,
        "what to segment (required): a video file (anything FFmpeg reads: .mp4, .mov, .mkv, .webm, .avi...; "
        "phones' rotation applied as players show it), a glob pattern of images in natural order such as "
        "'frames/*.png' (2.png before 10.png), or a camera index such as 0",
    ),
    "OUT": Key(
        None,
        "write the drawn video here, same size as the source and each frame at its source time, with the "
        "source's sound; the suffix picks the type: .mp4/.m4v H.264 (yuv420p, plays in browsers), .webm VP9, "
        ".mkv/.mov H.264, .avi MJPEG; written as .<name>.partial<suffix> beside it and renamed at the end; "
        "never the SOURCE itself",
    ),
    "MASKS_DIR": Key(
        None,
        "also write one PNG per frame here, named by its frame: the image's name for an image sequence "
        "(f001.png), the frame index for a video (000000.png): the 0/255 mask, the feathered alpha with "
        "FEATHER, or the 8-bit probability heatmap with MASK_THRESHOLD=null; masks already there are kept, "
        "so a stopped run resumes",
    ),
    "OVERWRITE": Key(False, "write masks in MASKS_DIR again where they exist (default: keep them, so runs resume)"),
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
    "BACKEND": _BATCH_KEYS["BACKEND"],
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
    "FPS": Key(
        None,
        "null: the source's own timing (a file's timestamps, variable frame rates included; a camera's "
        "capture times; 25 frames/s for an image sequence); a number: that constant frame rate instead "
        "(a file's sound is then left out: it would no longer match)",
    ),
    "CODEC": Key(
        None,
        "an FFmpeg encoder instead of the suffix's: libx264, libx265, libvpx-vp9, mpeg4, mjpeg... (OpenCV's "
        "codes mp4v, MJPG, avc1 are understood)",
    ),
    "CRF": Key(
        None,
        "quality of the video: libx264/libx265 0..51, libvpx-vp9 0..63, lower is better and bigger; null: "
        "18 for H.264, 30 for VP9",
    ),
    "AUDIO": Key(
        True,
        "keep the source's sound in OUT: copied as it is where the container takes it, else re-encoded (AAC "
        "for .mp4/.mov/.mkv, Opus for .webm, MP3 for .avi); false: leave it out",
    ),
    "PROGRESS": Key(True, "print frames/s on stderr while running (a line every few seconds when not a terminal)"),
}

_STRING_KEYS = (
    "SOURCE",
    "OUT",
    "MASKS_DIR",
    "WEIGHTS",
    "MODEL_PARAMS_DIR",
    "WEIGHTS_FILE",
    "DEVICE",
    "BACKEND",
    "PRECISION",
    "POSTPROCESS",
    "STYLE",
    "BACKGROUND",
    "COLOR",
    "CODEC",
)

USAGE = f"usage: python -m {PROG} SOURCE=<video, 'frames/*.png' or camera index> OUT=<result.mp4> [KEY=VALUE ...]"


def help_text() -> str:
    statuses = {
        0: "the whole source was processed (or MAX_FRAMES, or a key in the SHOW window)",
        1: "some frames failed (unreadable files in an image sequence, damaged packets, masks that could not be "
        "written)",
        2: EXIT_STATUSES[2],
        3: EXIT_STATUSES[3],
        130: "interrupted (Ctrl-C): OUT holds the frames done so far and plays; run again to resume MASKS_DIR",
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
    need(
        t is None or (is_number(t) and 0 < t < 1),
        "MASK_THRESHOLD",
        "expected a number strictly between 0 and 1, or null",
    )
    s = cfg["INPUT_SIZE"]
    need(s is None or s == _AUTO or (_is_int(s) and s >= 1), "INPUT_SIZE", "expected auto, null or a positive integer")
    check_backend_keys(cfg, need)
    need(cfg["STYLE"] in ("overlay", "fade", "cutout"), "STYLE", "expected overlay, fade or cutout")
    check_precision_keys(cfg, need)
    sm = cfg["SMOOTH"]
    need(is_number(sm) and 0 <= sm < 1, "SMOOTH", "expected a number in [0, 1) (0: off; e.g. 0.5)")
    mf = cfg["MAX_FRAMES"]
    need(mf is None or (_is_int(mf) and mf >= 1), "MAX_FRAMES", "expected null or an integer >= 1")
    fps = cfg["FPS"]
    need(fps is None or (is_number(fps) and 0 < fps <= 1000), "FPS", "expected null or a frame rate in (0, 1000]")
    for name in ("SHOW", "PROGRESS", "AUDIO", "OVERWRITE"):
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
    crf = cfg["CRF"]
    need(crf is None or (_is_int(crf) and crf >= 0), "CRF", "expected null or a whole number >= 0, e.g. 18")
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


class _CtrlC:
    """Ctrl-C during a run: the first press stops the frames (``KeyboardInterrupt``
    in the main thread); from then on, and once the frames are done, presses only
    say that the outputs are being finished. The writer threads close and rename
    the files; cutting that short would lose them."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.finishing = False
        self._old = None

    def __enter__(self) -> _CtrlC:
        # Only where Ctrl-C raises KeyboardInterrupt now (not where it is ignored, as under nohup).
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if not self.finishing:
            self.finishing = True
            raise KeyboardInterrupt
        print(
            f"{PROG}: still finishing {self.what}: waiting for it to be written (the frames done so far are kept)",
            file=sys.stderr,
            flush=True,
        )

    def hold(self) -> None:
        """The frames are done: from now on presses only wait."""
        self.finishing = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwrites(cfg: dict, source, out: Path | None, masks_dir: Path | None) -> None:
    """Refuse an ``OUT`` that is the source and a ``MASKS_DIR`` whose masks would
    replace source frames (or collide with each other)."""
    from .pipeline.video_masks import check_masks_dir
    from .pipeline.video_writer import partial_path

    if out is not None:
        for p in source.paths:
            if _same_file(out, p) or _same_file(partial_path(out), p):
                what = "the source video itself" if source.kind == "file" else f"one of the source's frames ({p})"
                raise ConfigError(
                    f"OUT={cfg['OUT']}: is {what}, which would be replaced; give another name, "
                    f"e.g. OUT={out.with_name(out.stem + '_faces' + (out.suffix if source.kind == 'file' else '.mp4'))}"
                )
    if masks_dir is None:
        return
    if source.kind == "images":
        names = source.mask_names()
        seen: dict[str, Path] = {}
        for name, p in zip(names, source.paths):
            if name in seen:
                raise ConfigError(
                    f"SOURCE={cfg['SOURCE']}: {seen[name]} and {p} would both write the mask {name}.png; "
                    "give a pattern whose files have distinct names, or segment them in two runs"
                )
            seen[name] = p
    else:
        # A video's masks are 000000.png...: only a source of that very name can be hit.
        names = [p.stem for p in source.paths if re.fullmatch(r"\d{6}", p.stem) and p.suffix.lower() == ".png"]
    check_masks_dir(masks_dir, names, source.paths, cfg["MASKS_DIR"])


def run(cfg: dict) -> int:
    """Run the video job described by a parsed config. Returns the exit status."""
    from .pipeline.atomic import remove_empty_dirs
    from .pipeline.video import open_source, plan_encoding
    from .pipeline.weights import get_weights

    get_weights(cfg["WEIGHTS"])  # an unknown name is a mistake in the command: say so first
    device = _resolve_device(backend_device(cfg["BACKEND"], cfg["DEVICE"]))
    if cfg["SHOW"]:
        _open_window()
    out = Path(cfg["OUT"]).expanduser() if cfg["OUT"] else None
    encoding = None
    if out is not None:
        if out.is_dir():
            raise ConfigError(f"OUT={out}: is a folder; give a file name such as {out / 'result.mp4'}")
        # Suffix, CODEC and CRF checked (and PyAV found) before anything is read or loaded.
        encoding = plan_encoding(out, cfg["CODEC"], cfg["CRF"])
    created: list[Path] = []
    try:
        source = open_source(cfg["SOURCE"], fps=cfg["FPS"])
        try:
            return _run(cfg, device, source, out, encoding, created)
        finally:
            source.close()
    finally:
        remove_empty_dirs(created)


def _run(cfg, device, source, out, encoding, created) -> int:
    from .pipeline.atomic import ensure_writable_dir
    from .pipeline.video import DEFAULT_FPS, MaskSink, VideoSink, probe, segment_video
    from .pipeline.video_pause import pause

    masks_dir = Path(cfg["MASKS_DIR"]).expanduser() if cfg["MASKS_DIR"] else None
    _refuse_overwrites(cfg, source, out, masks_dir)
    for key, folder in (("OUT", out.parent if out else None), ("MASKS_DIR", masks_dir)):
        if folder is None:
            continue
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
    notes: list[str] = []
    has_sound = bool(getattr(source, "audio_streams", None))
    keep_sound = has_sound and cfg["AUDIO"] and out is not None
    if keep_sound and cfg["FPS"] is not None:
        keep_sound = False
        notes.append(
            f"sound left out: FPS={cfg['FPS']} retimes the frames, so the sound would no longer match them; "
            "leave FPS out to keep it"
        )
    sink = None
    if out is not None:
        sink = VideoSink(
            # The rate is the encoder's hint (a camera may report none); the timestamps place the frames.
            out,
            (source.width, source.height),
            time_base=source.time_base,
            rate=cfg["FPS"] or source.fps or DEFAULT_FPS,
            codec=cfg["CODEC"],
            crf=cfg["CRF"],
            style=cfg["STYLE"],
            color=cfg["COLOR"],
            background=cfg["BACKGROUND"],
            sound_from=source.paths[0] if keep_sound else None,
        )
        notes += sink.notes
    masks = MaskSink(masks_dir, overwrite=cfg["OVERWRITE"]) if masks_dir is not None else None
    # Resuming masks: a frame whose mask is there is not segmented again when
    # nothing else needs it (no video, no window, no smoothing chain through it).
    skip = masks.keep if masks is not None and sink is None and not cfg["SHOW"] and not cfg["SMOOTH"] else None
    print(
        f"{PROG}: {source.spec} ({source.describe()}); weights {segmenter.weights_source}, device {device}"
        + (f" ({segmenter.runtime})" if cfg["BACKEND"] != "torch" else "")
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
    last_index = -1
    what = " and ".join(str(p) for p in (out, masks_dir) if p is not None) or "the run"
    with _CtrlC(what) as ctrl_c:
        frames = segment_video(source, segmenter, smooth=cfg["SMOOTH"], max_frames=cfg["MAX_FRAMES"], skip=skip)
        try:
            for frame in frames:
                last_index = frame.index
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
                        sink.put(
                            frame.bgr,
                            shown,
                            rendered,
                            pts=frame.pts,
                            time_base=frame.time_base,
                            duration=frame.duration,
                        )
                    if masks is not None:
                        masks.put(frame.name, frame.pmap, frame.mask, frame.alpha)
                except (OSError, ValueError) as e:
                    failure = f"writing failed: {_first_line(e)}"
                    break
                rate.update(frame.network_s)
                pause(f"frame:{rate.n}", PROG)
                if stopped_by_key:
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            ctrl_c.hold()  # from here on, Ctrl-C waits for the outputs
            _finish(frames.close)  # stops the reader thread
            rate.close()
        elapsed = time.perf_counter() - rate.start
        reached_max = cfg["MAX_FRAMES"] is not None and last_index + 1 >= cfg["MAX_FRAMES"]
        early = interrupted or stopped_by_key or reached_max or failure is not None
        written = None
        if sink is not None:
            if failure is None:
                err = _finish(lambda: sink.finish(cut_sound=early))
                if err is not None:
                    failure = f"writing {out} failed: {_first_line(err)}"
                    _finish(sink.abort)
                elif sink.result is not None and sink.result.exists():
                    written = sink.result  # only a file that is there is reported
            else:
                _finish(sink.abort)
        if masks is not None:
            err = _finish(masks.finish)
            if err is not None and failure is None:
                failure = f"writing masks failed: {_first_line(err)}"
    if cfg["SHOW"]:
        import cv2

        cv2.destroyAllWindows()
    for path, reason in source.skipped:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    for line in notes:
        print(f"{PROG}: {line}", file=sys.stderr)
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
    n = rate.n
    held = ""
    if written is not None:
        held = _describe_output(written, sink, source, probe)
    summary = (
        f"{PROG}: "
        + ("interrupted; " if interrupted else "stopped by a key; " if stopped_by_key else "")
        + f"{_plural(n, 'frame')} in {elapsed:.1f} s"
        + (
            f", {n / elapsed:.1f} frames/s (network {1000 * rate.network_s / n:.0f} ms/frame)"
            if n and elapsed > 0
            else ""
        )
        + (f"; wrote {written} ({held})" if written else "")
        + (f"; {_plural(masks.count, 'mask')} written in {cfg['MASKS_DIR']}" if masks is not None else "")
        + (
            f", {masks.kept} already there kept (OVERWRITE=true redoes them)"
            if masks is not None and masks.kept
            else ""
        )
        + (f"; {len(source.skipped)} unreadable frames skipped" if source.skipped and source.kind == "images" else "")
        + ("; the source could not be read whole (above)" if source.skipped and source.kind != "images" else "")
    )
    print(summary, file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failure is not None or source.skipped else 0


def _describe_output(path: Path, sink, source, probe) -> str:
    """What the written file holds, read back from it (so the summary cannot claim otherwise)."""
    try:
        info = probe(path)
    except Exception:  # noqa: BLE001 - the file is there; say what was asked for instead
        return f"{sink.encoding.label}, {source.width}x{source.height}"
    text = info.describe(sink.sound.describe() if sink.sound is not None and sink.sound.tracks else None)
    if sink.padded is not None:
        text += (
            f"; padded from {source.width}x{source.height} by repeating the edge: {sink.encoding.encoder} in "
            f"{sink.encoding.pix_fmt} takes even sizes only (.webm keeps odd sizes)"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(
        argv, help_text, lambda: run(parse_args(argv)), f"{PROG}: interrupted before any frame was processed"
    )


if __name__ == "__main__":
    sys.exit(main())
