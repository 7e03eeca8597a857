"""``python -m face_segmentation_pytorch.evaluate KEY=VALUE ...``: score face masks.

Three modes:

- ``PRED_DIR=<predictions> GT_DIR=<masks>``: predicted masks or heatmaps
  (``<stem>.png``, or the CLI's ``__mask.png`` / ``__heatmap.png`` outputs)
  against ground-truth masks, matched by stem;
- ``WEIGHTS=<entry> IMGS_DIR=<images> GT_DIR=<masks>`` (with
  ``MODEL_PARAMS_DIR`` or ``WEIGHTS_FILE``, e.g. a training run's best.pt):
  segment the images with :class:`~face_segmentation_pytorch.FaceSegmenter`,
  then score;
- ``WEIGHTS=<entry> DATA_DIR=<training data>``: the same on the validation
  part of a training data folder (the seed's ``img_test.npy``: its protocol),
  or on the trainer's own seeded split with ``VAL_FRACTION`` and ``SEED``;
  ``RUN_DIR=<training run>`` reads DATA_DIR, VAL_FRACTION, SEED and WEIGHTS
  from the run's ``config.yaml`` and scores its ``best.pt`` on the very
  images the run validated on.

Prints a table and writes the JSON report (scores, per-image list, failures)
to ``OUT`` (``-``: stdout), else ``OUT_DIR/eval.json``, else nowhere. Exit status: 0 every
ground truth scored, 1 some could not be (listed), 2 a mistake in the
command, 3 the weights could not be obtained or verified, 130 Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ConfigError, run_command

__all__ = ["main", "EVAL_KEYS", "EXIT_STATUSES", "USAGE", "parse_eval_args", "check_eval_config", "run"]

USAGE = (
    "usage: python -m face_segmentation_pytorch.evaluate PRED_DIR=<folder> GT_DIR=<folder> [KEY=VALUE ...]\n"
    "   or: python -m face_segmentation_pytorch.evaluate WEIGHTS=<entry> IMGS_DIR=<folder> GT_DIR=<folder> [KEY=VALUE ...]\n"
    "   or: python -m face_segmentation_pytorch.evaluate WEIGHTS=<entry> DATA_DIR=<training data folder> [KEY=VALUE ...]\n"
    "   or: python -m face_segmentation_pytorch.evaluate RUN_DIR=<training run folder> [KEY=VALUE ...]"
)

#: This command's exit statuses (``--help`` lists them).
EXIT_STATUSES = {
    0: "every ground-truth mask was scored",
    1: "some ground truths could not be scored (no prediction, unreadable, another size): listed, and in the JSON",
    2: "a mistake in the command: one 'error:' line says what to change",
    3: "the weights could not be obtained or verified",
    130: "interrupted (Ctrl-C)",
}


def _keys():
    from .jobs.settings import KEYS as batch_keys
    from .keys import Key

    return {
        "GT_DIR": Key(
            None,
            "ground-truth masks (with PRED_DIR or IMGS_DIR): <stem>.png (any image format), read by the one mask rule (brightest colour channel >= half its range; 0/1 images: 1; palette: index != 0)",
        ),
        "PRED_DIR": Key(
            None,
            "predictions to score: <stem>.png masks, or the CLI's outputs <stem>__mask.png / <image name>__mask.png "
            "/ __heatmap.png / __heatmap16.png / __heatmap.npy (masks preferred where several exist)",
        ),
        "IMGS_DIR": Key(None, "images to segment and score (with WEIGHTS), matched to GT_DIR by stem"),
        "DATA_DIR": Key(
            None,
            "instead of IMGS_DIR and GT_DIR: a training data folder; its validation part is segmented and scored "
            "(the seed's img_test.npy + mask_test.npy, or img_val.npy, or val/): the seed's test protocol",
        ),
        "VAL_FRACTION": Key(
            None,
            "with DATA_DIR: null: the data's own validation part (img_test.npy / img_val.npy, val/); a number: "
            "the trainer's seeded split of that share (with SEED), as train VAL_FRACTION=... made it",
        ),
        "SEED": Key(0, "with DATA_DIR and VAL_FRACTION: the seed of the trainer's split"),
        "RUN_DIR": Key(
            None,
            "a training run folder: its config.yaml gives DATA_DIR, VAL_FRACTION, SEED, WEIGHTS and INPUT_SIZE, and its best.pt "
            "is scored (WEIGHTS_FILE overrides) on the images the run validated on",
        ),
        "WEIGHTS": Key(
            None,
            "with IMGS_DIR or DATA_DIR: the weights entry (fcn8s_500, linknet34_oneflow, ...) whose network and preprocessing run",
        ),
        "WEIGHTS_FILE": Key(
            None,
            "with IMGS_DIR or DATA_DIR: run these weights (e.g. a training run's best.pt) with WEIGHTS' architecture",
        ),
        "MODEL_PARAMS_DIR": Key(
            None, "with IMGS_DIR or DATA_DIR: folder with the published weights (downloaded there when missing)"
        ),
        "INPUT_SIZE": Key(
            "auto",
            "with IMGS_DIR or DATA_DIR: auto (the entry's size), an int, or null (native size), as in the main CLI",
        ),
        "THRESHOLD": Key(0.5, "face probability above which a pixel is face (heatmaps, and the model's output)"),
        "POSTPROCESS": Key(
            None, "with IMGS_DIR or DATA_DIR: the CLI's mask steps (largest, fill_holes, smooth, full) before scoring"
        ),
        "DEVICE": Key(None, "with IMGS_DIR or DATA_DIR: cpu, cuda or cuda:N; null: cuda when available"),
        "BATCH_SIZE": Key(1, "with IMGS_DIR or DATA_DIR: images per forward pass"),
        # The batch command's keys, unchanged: what a precision costs in IoU is measured here.
        "PRECISION": batch_keys["PRECISION"],
        "COMPILE": batch_keys["COMPILE"],
        "RECURSIVE": Key(False, "also match files in sub-folders (by relative path)"),
        "OUT": Key(
            None,
            "write the JSON report here ('-': to stdout, the table then goes to stderr); null: OUT_DIR/eval.json, "
            "or no JSON (the table only)",
        ),
        "OUT_DIR": Key(None, "folder for eval.json (when OUT is not given)"),
        "SHOW": Key(10, "images with the lowest IoU listed in the table"),
        "PROGRESS": Key(True, "progress on stderr"),
    }


EVAL_STRING_KEYS = (
    "GT_DIR",
    "PRED_DIR",
    "IMGS_DIR",
    "DATA_DIR",
    "RUN_DIR",
    "WEIGHTS",
    "WEIGHTS_FILE",
    "MODEL_PARAMS_DIR",
    "POSTPROCESS",
    "PRECISION",
    "DEVICE",
    "OUT",
    "OUT_DIR",
)


#: This command's keys (``--help`` prints them).
EVAL_KEYS = _keys()


def help_text() -> str:
    from .keys import help_text as _help

    return _help(
        USAGE,
        "Score face masks against ground truth: mean_iou exactly as the LinkNet34 work's table computes it "
        "(per image |P and G| / (|P or G| + 1e-6), averaged), dataset_iou, f1, pixel_accuracy, per-image IoU.",
        EVAL_KEYS,
        "python -m face_segmentation_pytorch.evaluate WEIGHTS=linknet34_oneflow WEIGHTS_FILE=runs/a/best.pt "
        "IMGS_DIR=data/val/images GT_DIR=data/val/masks OUT_DIR=runs/a",
        EXIT_STATUSES,
    )


def parse_eval_args(argv: list[str]) -> dict:
    """Parse and check ``KEY=VALUE`` arguments (see :func:`check_eval_config`)."""
    from .keys import parse_dotlist

    return check_eval_config(parse_dotlist(argv, EVAL_KEYS, EVAL_STRING_KEYS, USAGE.splitlines()[0]))


def check_eval_config(cfg: dict) -> dict:
    """Check the settings of one evaluation; returns them with paths expanded.

    Raises:
        ConfigError: One line naming the key and what is expected.
    """
    from .jobs.folder import check_precision_keys
    from .keys import is_int, is_number

    cfg = _from_run_dir(dict(cfg))

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{name}={cfg[name]!r} is invalid: {what}")

    if cfg["DATA_DIR"] is not None:
        for name in ("GT_DIR", "PRED_DIR", "IMGS_DIR", "RECURSIVE"):
            if cfg[name]:
                raise ConfigError(f"DATA_DIR brings its own images and masks; drop {name}")
        if cfg["WEIGHTS"] is None:
            raise ConfigError("DATA_DIR needs WEIGHTS=<entry> (e.g. linknet34_oneflow): the network to run")
    elif cfg["GT_DIR"] is None:
        raise ConfigError(f"GT_DIR is required: the folder of ground-truth masks; {USAGE.splitlines()[0]}")
    if cfg["PRED_DIR"] is not None and cfg["IMGS_DIR"] is not None:
        raise ConfigError(
            "give PRED_DIR (score existing predictions) or IMGS_DIR with WEIGHTS (segment, then score), not both"
        )
    if cfg["PRED_DIR"] is None and cfg["IMGS_DIR"] is None and cfg["DATA_DIR"] is None:
        raise ConfigError("nothing to score: give PRED_DIR=<predictions>, or IMGS_DIR=<images> with WEIGHTS=<entry>")
    if cfg["PRED_DIR"] is not None:
        for name in ("WEIGHTS", "WEIGHTS_FILE", "POSTPROCESS"):
            if cfg[name] is not None:
                raise ConfigError(f"{name} applies to IMGS_DIR (segmenting); PRED_DIR scores files that exist")
    if cfg["IMGS_DIR"] is not None and cfg["WEIGHTS"] is None:
        raise ConfigError("IMGS_DIR needs WEIGHTS=<entry> (e.g. linknet34_oneflow, fcn8s_500): the network to run")
    t = cfg["THRESHOLD"]
    need(is_number(t) and 0 < t < 1, "THRESHOLD", "expected a number strictly between 0 and 1")
    need(is_int(cfg["BATCH_SIZE"]) and cfg["BATCH_SIZE"] >= 1, "BATCH_SIZE", "expected an integer >= 1")
    need(is_int(cfg["SHOW"]) and cfg["SHOW"] >= 0, "SHOW", "expected an integer >= 0")
    vf = cfg["VAL_FRACTION"]
    need(vf is None or (is_number(vf) and 0 < vf < 1), "VAL_FRACTION", "expected null or a number in (0, 1)")
    need(is_int(cfg["SEED"]) and cfg["SEED"] >= 0, "SEED", "expected an integer >= 0")
    if cfg["DATA_DIR"] is None and (vf is not None or cfg["SEED"] != 0):
        raise ConfigError("VAL_FRACTION and SEED choose the validation split of DATA_DIR (or RUN_DIR); give one")
    s = cfg["INPUT_SIZE"]
    need(s is None or s == "auto" or (is_int(s) and s >= 1), "INPUT_SIZE", "expected auto, null or a positive integer")
    for name in ("RECURSIVE", "PROGRESS"):
        need(isinstance(cfg[name], bool), name, "expected true or false")
    check_precision_keys(cfg, need)
    if cfg["PRED_DIR"] is not None and (cfg["PRECISION"] != "fp32" or cfg["COMPILE"]):
        raise ConfigError(
            "PRECISION and COMPILE apply to IMGS_DIR or DATA_DIR (segmenting); PRED_DIR scores files that exist"
        )
    for name in ("GT_DIR", "PRED_DIR", "IMGS_DIR", "DATA_DIR", "WEIGHTS_FILE", "MODEL_PARAMS_DIR", "OUT", "OUT_DIR"):
        if cfg[name] is not None and not (name == "OUT" and cfg[name] == "-"):
            cfg[name] = str(Path(cfg[name]).expanduser())
    if cfg["WEIGHTS_FILE"] is not None and not Path(cfg["WEIGHTS_FILE"]).exists():
        raise ConfigError(f"WEIGHTS_FILE={cfg['WEIGHTS_FILE']}: no such file or folder")
    if cfg["POSTPROCESS"] is not None:
        from .segmentation.postprocess import parse_steps

        parse_steps(cfg["POSTPROCESS"])
    return cfg


def _from_run_dir(cfg: dict) -> dict:
    """Fill DATA_DIR, VAL_FRACTION, SEED, WEIGHTS and WEIGHTS_FILE from a training run's folder.

    Keys the user gives win, except that DATA_DIR, VAL_FRACTION and SEED must match
    the run's (another split would score images the run trained on).
    """
    if cfg.get("RUN_DIR") is None:
        return cfg
    from omegaconf import OmegaConf

    run_dir = Path(cfg["RUN_DIR"]).expanduser()
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"RUN_DIR={run_dir}: no config.yaml (not a training run folder of train OUT_DIR=...)")
    for name in ("GT_DIR", "PRED_DIR", "IMGS_DIR"):
        if cfg[name] is not None:
            raise ConfigError(f"RUN_DIR scores the run's validation images; drop {name}")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(config))
    except Exception as e:  # a damaged file: say which
        raise ConfigError(f"{config}: cannot read it ({str(e).splitlines()[0]})") from None
    data_dir = saved.get("DATA_DIR")
    if data_dir is None:
        raise ConfigError(f"{config}: names no DATA_DIR")
    run_values = {"DATA_DIR": data_dir, "VAL_FRACTION": saved.get("VAL_FRACTION", 0.1), "SEED": saved.get("SEED", 0)}
    for name, value in run_values.items():
        given = cfg[name]
        if name == "DATA_DIR" and given is not None:
            same = Path(given).expanduser().resolve() == Path(value).expanduser().resolve()
        else:
            same = given is None or given == value or (name == "SEED" and given == 0)
        if not same:
            raise ConfigError(f"{name}={given!r} differs from the run's {value!r} (RUN_DIR={run_dir}); drop {name}")
        cfg[name] = value
    if not cfg["VAL_FRACTION"]:
        raise ConfigError(f"RUN_DIR={run_dir} trained with VAL_FRACTION=0: it held no images out to score")
    if cfg["WEIGHTS"] is None:
        cfg["WEIGHTS"] = saved.get("WEIGHTS")
    if cfg["INPUT_SIZE"] == "auto" and saved.get("INPUT_SIZE") is not None:
        cfg["INPUT_SIZE"] = saved["INPUT_SIZE"]  # the size the run trained and validated at
    if cfg["WEIGHTS_FILE"] is None:
        best = run_dir / "best.pt"
        if not best.is_file():
            raise ConfigError(f"RUN_DIR={run_dir}: no best.pt yet (train it first, or give WEIGHTS_FILE=...)")
        cfg["WEIGHTS_FILE"] = str(best)
    return cfg


def run(cfg: dict) -> int:
    """Run one checked evaluation; returns the exit status."""
    from .files.atomic import save_atomic
    from .training.evaluation import dumps, evaluate_data_dir, evaluate_predictions, evaluate_segmenter, format_table

    if cfg["PRED_DIR"] is not None:
        report = evaluate_predictions(
            cfg["PRED_DIR"],
            cfg["GT_DIR"],
            threshold=cfg["THRESHOLD"],
            recursive=cfg["RECURSIVE"],
            progress=cfg["PROGRESS"],
        )
        source = f"predictions in {cfg['PRED_DIR']}"
    else:
        from .jobs.folder import make_segmenter
        from .segmentation.segmenter import resolve_device
        from .weights.registry import get_weights

        get_weights(cfg["WEIGHTS"])
        try:
            device = resolve_device(cfg["DEVICE"])
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"DEVICE={cfg['DEVICE']!r} is invalid: {e}") from None
        # The batch command's segmenter; this command's threshold key is THRESHOLD.
        segmenter = make_segmenter(cfg, device, progress=cfg["PROGRESS"], threshold=cfg["THRESHOLD"])
        if cfg["DATA_DIR"] is not None:
            report = evaluate_data_dir(
                segmenter,
                cfg["DATA_DIR"],
                val_fraction=cfg["VAL_FRACTION"] or 0.0,
                seed=cfg["SEED"],
                batch_size=cfg["BATCH_SIZE"],
                progress=cfg["PROGRESS"],
            )
        else:
            report = evaluate_segmenter(
                segmenter,
                cfg["IMGS_DIR"],
                cfg["GT_DIR"],
                recursive=cfg["RECURSIVE"],
                batch_size=cfg["BATCH_SIZE"],
                progress=cfg["PROGRESS"],
            )
        report.info.update(
            weights=cfg["WEIGHTS"],
            weights_file=cfg["WEIGHTS_FILE"],
            weights_source=str(segmenter.weights_source),
            input_size=segmenter.input_size,
            precision=segmenter.precision,
            device=str(segmenter.device),
            threshold=cfg["THRESHOLD"],
            postprocess=cfg["POSTPROCESS"],
        )
        source = f"{cfg['WEIGHTS']} ({segmenter.weights_source}) on {cfg['DATA_DIR'] or cfg['IMGS_DIR']}"
    text = dumps(report)
    to_stdout = cfg["OUT"] == "-"
    out = (
        None
        if to_stdout
        else Path(cfg["OUT"])
        if cfg["OUT"]
        else Path(cfg["OUT_DIR"]) / "eval.json"
        if cfg["OUT_DIR"]
        else None
    )
    against = f" against {cfg['GT_DIR']}" if cfg["GT_DIR"] else f" ({report.info.get('part')})"
    table = f"face_segmentation_pytorch.evaluate: {source}{against}\n" + format_table(report, cfg["SHOW"])
    if out is not None:
        try:
            save_atomic(out, lambda f: f.write(text.encode("utf-8")))
        except OSError as e:
            raise ConfigError(f"cannot write the report to {out} ({e.strerror or e}); choose another OUT") from None
        print(table)
        print(f"report: {out}")
    elif to_stdout:
        # OUT=-: the JSON owns stdout (for a pipe); the table goes to stderr.
        print(table, file=sys.stderr)
        sys.stdout.write(text)
    else:
        print(table)
    return 1 if report.failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(
        argv, help_text, lambda: run(parse_eval_args(argv)), "face_segmentation_pytorch.evaluate: interrupted"
    )


if __name__ == "__main__":
    sys.exit(main())
