"""``python -m face_segmentation_pytorch.label PROJECT=<folder> SOURCE=<video, folder or glob>``.

Starts the labelling page on ``127.0.0.1`` and prints its address (with the
token every request needs). ``APPLY=true`` instead runs the video command with
the project's current model over the whole source and exits.

Settings given once are remembered in ``PROJECT/label.json``: later starts need
only ``PROJECT=`` (keys given again replace the remembered values; ``SOURCE``
cannot change, as the labels are frames of it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import EXIT_STATUSES, ConfigError, run_command
from ..keys import Key, is_int, is_number, parse_dotlist
from ..keys import help_text as keys_help_text

__all__ = ["KEYS", "USAGE", "main", "resolve_settings"]

PROG = "face_segmentation_pytorch.label"
USAGE = f"usage: python -m {PROG} PROJECT=<folder> SOURCE=<video, folder of images or 'frames/*.png'> [KEY=VALUE ...]"
_AUTO = "auto"

KEYS: dict[str, Key] = {
    "PROJECT": Key(None, "folder of the labels, fine-tuning rounds and settings (required; made if missing)"),
    "SOURCE": Key(
        None,
        "the frames to label: a video file, a folder of images or a glob such as 'frames/*.png' (required the "
        "first time; remembered)",
    ),
    "WEIGHTS": Key("linknet34_oneflow", "the weights entry: the network, its preprocessing and published weights"),
    "WEIGHTS_FILE": Key(
        None, "start from the weights in this file (WEIGHTS' architecture); null: the published WEIGHTS"
    ),
    "MODEL_PARAMS_DIR": Key(None, "folder of the published weights; null: the cache folder"),
    "INPUT_SIZE": Key(
        _AUTO, "network input side: auto (the weights'), an int (LinkNet34: a multiple of 32) or null (native)"
    ),
    "THRESHOLD": Key(
        0.5, "face probability above which the model's mask is face, in (0, 1): the page's starting threshold"
    ),
    "DEVICE": Key(None, "cpu, cuda or cuda:N for the page's masks and the fine-tune; null: cuda when available"),
    "START_FRAMES": Key(8, "evenly spaced frames suggested first"),
    "SCAN_FRAMES": Key(
        300, "frames the current model scores to find the least sure ones (evenly spaced; all if fewer)"
    ),
    "EPOCHS": Key(20, "fine-tune: passes over the labels (the page can change it)"),
    "BATCH_SIZE": Key(4, "fine-tune: images per step (at most the number of labels)"),
    "LR": Key(None, "fine-tune: learning rate; null: the trainer's (0.01 sgd, 0.001 adamw)"),
    "OPTIMIZER": Key("sgd", "fine-tune: sgd (the recipe) or adamw"),
    "THREADS": Key(None, "fine-tune: torch CPU threads; null: torch's default"),
    "HOST": Key("127.0.0.1", "address to listen on; only this machine can reach 127.0.0.1"),
    "PORT": Key(8765, "port to listen on; 0: any free port"),
    "APPLY": Key(
        False,
        "run the video command with the current model over the whole SOURCE (masks and an overlay "
        "in PROJECT/apply/<round>/), then exit",
    ),
}

STRING_KEYS = ("PROJECT", "SOURCE", "WEIGHTS", "WEIGHTS_FILE", "MODEL_PARAMS_DIR", "DEVICE", "HOST")
#: Remembered in label.json between starts.
REMEMBERED = (
    "SOURCE",
    "WEIGHTS",
    "WEIGHTS_FILE",
    "MODEL_PARAMS_DIR",
    "INPUT_SIZE",
    "THRESHOLD",
    "DEVICE",
    "START_FRAMES",
    "SCAN_FRAMES",
    "EPOCHS",
    "BATCH_SIZE",
    "LR",
    "OPTIMIZER",
    "THREADS",
)

EXIT = {
    0: "APPLY=true: every frame was segmented (the page: stopped normally)",
    1: "APPLY=true: some frames failed (the video command lists them)",
    2: "a mistake in the command (a port in use, a bad key or SOURCE): one 'error:' line says what to change",
    3: EXIT_STATUSES[3],
    130: "stopped with Ctrl-C; a running fine-tune saved last.pt and Train resumes it",
}


def help_text() -> str:
    return keys_help_text(
        USAGE,
        "Label face masks in the browser, fine-tune on them and apply the result to the whole source: "
        "the page starts each frame from the current model's mask, saves masks in the layout the train "
        "command reads (PROJECT/data), runs the fine-tune in the background and suggests the frames the "
        "model is least sure of. docs/label.md walks through the loop.",
        KEYS,
        f"python -m {PROG} PROJECT=labels/clip1 SOURCE=clip1.mp4   (then open the printed address)",
        EXIT,
    )


def _check(cfg: dict) -> dict:
    import face_segmentation_pytorch as fsp

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={cfg[key]!r} is invalid: {what}")

    if cfg["PROJECT"] is None:
        raise ConfigError(f"PROJECT is required; {USAGE}")
    if cfg["SOURCE"] is None:
        raise ConfigError(f"SOURCE is required the first time (PROJECT={cfg['PROJECT']} has none yet); {USAGE}")
    if cfg["WEIGHTS"] not in fsp.WEIGHTS:
        raise ConfigError(f"WEIGHTS={cfg['WEIGHTS']!r} is unknown; choose one of: {', '.join(fsp.WEIGHTS)}")
    for key in ("WEIGHTS_FILE", "MODEL_PARAMS_DIR"):
        if cfg[key] is not None:
            cfg[key] = str(Path(cfg[key]).expanduser().absolute())
    if cfg["WEIGHTS_FILE"] is not None and not Path(cfg["WEIGHTS_FILE"]).exists():
        raise ConfigError(f"WEIGHTS_FILE={cfg['WEIGHTS_FILE']}: no such file")
    size = cfg["INPUT_SIZE"]
    need(size in (_AUTO, None) or (is_int(size) and size >= 1), "INPUT_SIZE", "expected auto, null or an integer")
    t = cfg["THRESHOLD"]
    need(is_number(t) and 0 < t < 1, "THRESHOLD", "expected a number strictly between 0 and 1")
    for key, low in (("START_FRAMES", 1), ("SCAN_FRAMES", 2), ("EPOCHS", 1), ("BATCH_SIZE", 1)):
        need(is_int(cfg[key]) and cfg[key] >= low, key, f"expected an integer >= {low}")
    need(cfg["LR"] is None or (is_number(cfg["LR"]) and cfg["LR"] > 0), "LR", "expected null or a number > 0")
    need(cfg["OPTIMIZER"] in ("sgd", "adamw"), "OPTIMIZER", "expected sgd or adamw")
    need(
        cfg["THREADS"] is None or (is_int(cfg["THREADS"]) and cfg["THREADS"] >= 1),
        "THREADS",
        "expected null or an integer >= 1",
    )
    need(is_int(cfg["PORT"]) and 0 <= cfg["PORT"] <= 65535, "PORT", "expected an integer from 0 to 65535")
    need(isinstance(cfg["APPLY"], bool), "APPLY", "expected true or false")
    need(isinstance(cfg["HOST"], str) and cfg["HOST"] != "", "HOST", "expected an address such as 127.0.0.1")
    return cfg


def resolve_settings(argv: list[str]) -> tuple[dict, dict]:
    """The settings: keys given now, over those remembered in ``PROJECT/label.json``, over the defaults.

    Returns:
        ``(settings, remembered state of label.json)``.

    Raises:
        ConfigError: A bad key or value, or a SOURCE other than the project's.
    """
    from .project import read_json

    cfg = parse_dotlist(argv, KEYS, STRING_KEYS, USAGE)
    given = {a.split("=", 1)[0] for a in argv}
    if cfg["PROJECT"] is None:
        raise ConfigError(f"PROJECT is required; {USAGE}")
    state_file = Path(cfg["PROJECT"]).expanduser() / "label.json"
    remembered = read_json(state_file)
    settings = remembered.get("settings", {}) if isinstance(remembered.get("settings"), dict) else {}
    if "SOURCE" in given and settings.get("SOURCE") and cfg["SOURCE"] is not None:
        now = _source_key(cfg["SOURCE"])
        if now != settings["SOURCE"]:
            raise ConfigError(
                f"SOURCE={cfg['SOURCE']}: PROJECT={cfg['PROJECT']} labels frames of {settings['SOURCE']}; give "
                "that SOURCE (or none), or another PROJECT"
            )
    for key in REMEMBERED:
        if key not in given and key in settings:
            cfg[key] = settings[key]
    cfg = _check(cfg)
    cfg["SOURCE"] = _source_key(cfg["SOURCE"])
    return cfg, remembered


def _source_key(source: str) -> str:
    """The source as remembered: an absolute path or pattern."""
    return os.path.abspath(os.path.expanduser(str(source)))


def _open(cfg: dict, remembered: dict):
    from .frames import open_frames
    from .project import Project

    frames = open_frames(cfg["SOURCE"])  # first: a wrong SOURCE leaves no project folder behind
    project = Project(cfg["PROJECT"])
    known = remembered.get("frames")
    if isinstance(known, int) and known != frames.count:
        raise ConfigError(
            f"SOURCE={cfg['SOURCE']} has {frames.count} frames now but had {known} when PROJECT={project.root} "
            "was labelled: its labels may be other frames; use a new PROJECT"
        )
    project.lock()  # before the repair: it removes what a crash left, never another server's files
    for note in project.repair(frames.count):
        print(f"{PROG}: {note}", file=sys.stderr)
    project.update_state(settings={k: cfg[k] for k in REMEMBERED}, frames=frames.count)
    return project, frames


def _apply_now(cfg: dict, project, frames) -> int:
    """APPLY=true: the video command in the foreground, into PROJECT/apply/<round>/."""
    import secrets
    import shutil

    from .app import VIDEO_MODULE, apply_arguments
    from .jobs import python_command
    from .predictor import Predictor

    predictor = Predictor(project, frames, cfg)
    info = predictor.current()
    r = project.current_round()
    name = r.name if r is not None else "start"
    partial = project.tmp / f"apply-{name}-{secrets.token_hex(4)}"
    final = project.apply_dir / name
    cmd = python_command(VIDEO_MODULE, apply_arguments(frames, cfg, info.path, partial))
    print(f"{PROG}: applying {info.name} to {frames.path} ({frames.count} frames)", file=sys.stderr, flush=True)
    try:
        rc = subprocess.call(cmd)
    except KeyboardInterrupt:
        rc = 130
    if rc != 0:
        shutil.rmtree(partial, ignore_errors=True)
        return rc
    project.replace_dir(partial, final)
    print(f"{PROG}: masks in {final / 'masks'}, overlay in {final / 'overlay.mp4'}", file=sys.stderr)
    return 0


def _serve(cfg: dict, project, frames) -> int:
    import secrets

    from .app import LabelApp
    from .server import make_server

    app = LabelApp(project, frames, cfg)
    info = app.predictor.check()
    token = secrets.token_urlsafe(18)
    server = make_server(app, cfg["HOST"], cfg["PORT"], token)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    print(
        f"{PROG}: {frames.count} frames of {frames.path}, {len(project.labels())} labelled, model: {info.name}\n"
        f"{PROG}: open {server.url}\n{PROG}: Ctrl-C stops the server (and a running fine-tune, saving last.pt)",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        try:
            said = app.shutdown()
        except KeyboardInterrupt:
            said = None
        print(f"{PROG}: stopped" + (f"; {said}" if said else ""), file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        frames.close()
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def body() -> int:
        cfg, remembered = resolve_settings(argv)
        project, frames = _open(cfg, remembered)
        if cfg["APPLY"]:
            return _apply_now(cfg, project, frames)
        return _serve(cfg, project, frames)

    return run_command(argv, help_text, body, f"{PROG}: interrupted")
