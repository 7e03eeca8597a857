"""Command line: ``python -m face_segmentation_pytorch KEY=VALUE ...``.

Keys are omegaconf dot-list style (``IMGS_DIR=photos MASK_THRESHOLD=0.5``).
User mistakes end with one ``error:`` line and exit status 2; images that
fail to read, run or write are listed at the end (and in a CSV log) and make
the exit status 1; Ctrl-C stops cleanly with a summary and exit status 130.
Runs resume: images whose outputs all exist are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ConfigError, run_command
from .jobs.folder import (
    Plan,
    check_backend_keys,
    check_precision_keys,
    check_rerun_settings,
    check_settings,
    collect_inputs,
    make_segmenter,
    nothing_to_do,
    output_settings,
    plan_run,
    record_settings,
    report_unused_boxes,
    start_line,
)
from .jobs.local import run_local
from .jobs.settings import AUTO, FAILURE_LOG_NAME, KEYS, OUTPUT_KEYS, RUN_SETTINGS_NAME, SEGMENTER_KEYS
from .keys import help_text as keys_help_text
from .keys import is_int, parse_dotlist

# The command parses keys and reports; the job, its plan and writer and its
# engines live below it (face_segmentation_pytorch.jobs). The names re-exported
# here are this module's documented API from before that move.
__all__ = [
    "main",
    "parse_args",
    "help_text",
    "run",
    "KEYS",
    "collect_inputs",
    "make_segmenter",
    "plan_run",
    "Plan",
    "SEGMENTER_KEYS",
    "RUN_SETTINGS_NAME",
    "OUTPUT_KEYS",
    "FAILURE_LOG_NAME",
    "AUTO",
    "output_settings",
    "check_rerun_settings",
    "record_settings",
    "report_unused_boxes",
    "check_settings",
    "nothing_to_do",
    "start_line",
    "check_precision_keys",
]


_STRING_KEYS = (
    "IMGS_DIR",
    "MODEL_PARAMS_DIR",
    "OUT_DIR",
    "DEVICE",
    "WEIGHTS",
    "WEIGHTS_URL",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256",
    "PRECISION",
    "POSTPROCESS",
    "GALLERY",
    "FAILURE_LOG",
    "HEATMAP_FORMAT",
    "CROP",
    "BOXES",
    "BACKEND",
    "ENGINE",
    "RAY_ADDRESS",
    "PIPELINE",
)

USAGE = "usage: python -m face_segmentation_pytorch IMGS_DIR=<folder> [KEY=VALUE ...]"


def help_text() -> str:
    return keys_help_text(
        USAGE,
        "Segment faces in every image of a folder.",
        KEYS,
        "python -m face_segmentation_pytorch MODEL_PARAMS_DIR=weights IMGS_DIR=photos MASK_THRESHOLD=0.5",
    )


def parse_args(argv: list[str]) -> dict:
    """Parse ``KEY=VALUE`` arguments into a validated config dict.

    Raises:
        ConfigError: Unknown key (with a suggestion), malformed argument or
            invalid value.
    """
    cfg = parse_dotlist(argv, KEYS, _STRING_KEYS, USAGE)

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: {what}")

    if cfg["IMGS_DIR"] is None:
        raise ConfigError(f"IMGS_DIR is required: give the folder of images, e.g. IMGS_DIR=photos; {USAGE}")
    need(is_int(cfg["BATCH_SIZE"]) and cfg["BATCH_SIZE"] >= 1, "BATCH_SIZE", "expected an integer >= 1")
    need(
        cfg["WORKERS"] == AUTO or (is_int(cfg["WORKERS"]) and cfg["WORKERS"] >= 1),
        "WORKERS",
        "expected auto or an integer >= 1",
    )
    need(cfg["PIPELINE"] in ("auto", "threads", "processes"), "PIPELINE", "expected auto, threads or processes")
    need(
        cfg["PIPELINE"] != "processes" or cfg["ENGINE"] == "local",
        "PIPELINE",
        "ENGINE=ray's actors are processes already and read in threads; leave PIPELINE out",
    )
    t = cfg["MASK_THRESHOLD"]
    need(
        t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1),
        "MASK_THRESHOLD",
        "expected a number strictly between 0 and 1, or null for heatmaps",
    )
    s = cfg["INPUT_SIZE"]
    need(
        s is None or s == AUTO or (is_int(s) and s >= 1),
        "INPUT_SIZE",
        "expected auto, null (native size) or a positive integer",
    )
    fc = cfg["FACE_CHANNEL"]
    need(fc is None or (is_int(fc) and fc >= 1), "FACE_CHANNEL", "expected null or a channel index >= 1")
    need(cfg["CROP"] in (None, "faces"), "CROP", "expected null or faces")
    check_backend_keys(cfg, need)
    ms = cfg["MIN_FACE_SCORE"]
    need(
        isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 <= ms <= 1,
        "MIN_FACE_SCORE",
        "expected a number in [0, 1]",
    )
    check_precision_keys(cfg, need)
    for name in ("RECURSIVE", "PRE_NORMALIZE", "PROGRESS", "OVERWRITE", "OVERLAY", "CUTOUT", "PER_FACE"):
        need(isinstance(cfg[name], bool), name, "expected true or false")
    mp = cfg["MAX_IMAGE_PIXELS"]
    need(mp is None or (is_int(mp) and mp > 0), "MAX_IMAGE_PIXELS", "expected a positive integer")
    need(cfg["ENGINE"] in ("local", "ray"), "ENGINE", "expected local or ray")
    na, gpa = cfg["RAY_NUM_ACTORS"], cfg["RAY_GPUS_PER_ACTOR"]
    need(na is None or (is_int(na) and na >= 1), "RAY_NUM_ACTORS", "expected null or an integer >= 1")
    need(
        isinstance(gpa, (int, float)) and not isinstance(gpa, bool) and gpa >= 0,
        "RAY_GPUS_PER_ACTOR",
        "expected a number >= 0 (0.5: two actors share a GPU)",
    )
    for name in ("RAY_ADDRESS", "RAY_NUM_ACTORS", "RAY_GPUS_PER_ACTOR"):
        need(cfg[name] == KEYS[name].default or cfg["ENGINE"] == "ray", name, "applies to ENGINE=ray only")
    need(cfg["HEATMAP_FORMAT"] in ("png8", "png16", "npy"), "HEATMAP_FORMAT", "expected png8, png16 or npy")
    if cfg["POSTPROCESS"] is not None:
        from .segmentation.postprocess import parse_steps

        parse_steps(cfg["POSTPROCESS"])
        need(t is not None, "POSTPROCESS", "post-processing works on masks: add MASK_THRESHOLD=0.5")
    need(is_int(cfg["DILATE"]), "DILATE", "expected a whole number of pixels (negative shrinks)")
    need(is_int(cfg["FEATHER"]) and cfg["FEATHER"] >= 0, "FEATHER", "expected a whole number of pixels >= 0")
    for name in ("DILATE", "FEATHER"):
        need(cfg[name] == 0 or t is not None, name, "works on masks: add MASK_THRESHOLD=0.5")
    if cfg["PER_FACE"]:
        need(cfg["CROP"] is not None or cfg["BOXES"] is not None, "PER_FACE", "needs CROP=faces or BOXES=<file>")
        need(t is not None, "PER_FACE", "per-face outputs are masks: add MASK_THRESHOLD=0.5")
    wf = cfg["WEIGHTS_FILE"]
    if wf is not None and not Path(wf).expanduser().exists():
        raise ConfigError(f"WEIGHTS_FILE={wf}: no such file or folder; give the path of a weights file")
    if wf is not None:
        cfg["WEIGHTS_FILE"] = str(Path(wf).expanduser())
    sha = cfg["WEIGHTS_SHA256"]
    if sha is not None:
        sha = sha.strip().lower()
        need(
            len(sha) == 64 and all(c in "0123456789abcdef" for c in sha),
            "WEIGHTS_SHA256",
            "expected 64 hexadecimal digits",
        )
        cfg["WEIGHTS_SHA256"] = sha
    return cfg


def run(cfg: dict) -> int:
    """Run the batch job described by a parsed config. Returns the exit status.

    Folders the run creates (``OUT_DIR``, the weights folder) are removed
    again if the run ends with nothing written in them.
    """
    from .files.atomic import remove_empty_dirs

    created: list[Path] = []
    try:
        if cfg.get("ENGINE") == "ray":
            from .jobs.ray_engine import run_ray

            return run_ray(cfg, created)
        return run_local(cfg, created)
    finally:
        remove_empty_dirs(created)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (``errors.EXIT_STATUSES``)."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned worker process is importing a script that runs the command at
        # import (no main guard): running it again here would start workers of
        # workers. The worker goes on with its own job once the import ends.
        print(
            "warning: a worker process imported a script that calls face_segmentation_pytorch.cli.main() "
            "at import; put the call under if __name__ == '__main__': (the run goes on)",
            file=sys.stderr,
        )
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(
        argv,
        help_text,
        lambda: run(parse_args(argv)),
        "face_segmentation_pytorch: interrupted before any image was processed",
    )
