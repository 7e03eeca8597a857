"""Export the network to ONNX: ``python -m face_segmentation_pytorch.export OUT=model.onnx``.

The graph takes ``data`` (N, 3, H, W), the network's prepared input (FCN-8s:
BGR minus the mean; LinkNet34: normalised RGB, sides multiples of 32), with N,
H and W dynamic, and returns the network's output: Caffe's ``score`` blob
(N, C, H, W) for FCN-8s, ``logits`` (N, 1, H, W) for LinkNet34. It is the dense
network (the FCN-8s constant-padding shortcut is PyTorch-side Python);
``CHECK=true`` runs it in ONNX Runtime against PyTorch and prints the relative error.
``WEIGHTS_FILE=best.pt`` exports a file of your own with ``WEIGHTS``' architecture.
Keys as every command takes them (``--help``); the older form ``export OUT.onnx
--params-dir DIR --weights NAME --opset N --check`` still works.
Exit status: 0, 1 (``CHECK`` found a difference), 2 (a mistake in the
command), 3 (the weights could not be obtained or verified).
Needs the ``[onnx]`` extra: onnx, onnxscript (the exporter), onnxruntime (the check).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import EXIT_STATUSES as _COMMON_STATUSES
from .errors import ConfigError, run_command
from .formats.onnx import check_onnx, export_onnx
from .keys import FlagParser, Key, parse_keys_and_flags

__all__ = ["export_onnx", "check_onnx", "main", "parse_args", "KEYS"]

PROG = "python -m face_segmentation_pytorch.export"
USAGE = f"usage: {PROG} OUT=<model.onnx> [KEY=VALUE ...]"

KEYS: dict[str, Key] = {
    "OUT": Key(None, "the .onnx file to write (required)"),
    "WEIGHTS": Key(
        "fcn8s_500",
        "which weights entry gives the architecture (and, without WEIGHTS_FILE, the weights): fcn8s_500, "
        "fcn8s_300_no_aug, fcn8s_500_port, linknet34_oneflow, linknet34_oneflow_demo (older flag: --weights)",
    ),
    "WEIGHTS_FILE": Key(
        None,
        "export the weights in this file (.pt, .safetensors, .caffemodel, a OneFlow folder or zip; e.g. a "
        "training run's best.pt) with WEIGHTS' architecture, instead of looking in MODEL_PARAMS_DIR",
    ),
    "MODEL_PARAMS_DIR": Key(
        None,
        "folder with the weights, as for the other commands; downloaded there when missing; null: "
        "$FACE_SEGMENTATION_PYTORCH_HOME, else the cache folder (older flag: --params-dir)",
    ),
    "WEIGHTS_URL": Key(None, "download the weights archive from this URL instead"),
    "WEIGHTS_SHA256": Key(None, "expected sha256 of the downloaded archive"),
    "OPSET": Key(18, "ONNX opset version (older flag: --opset)"),
    "CHECK": Key(
        False,
        "run the graph in ONNX Runtime against PyTorch on random inputs and print the relative error; "
        "exit 1 above 1e-4 (older flag: --check)",
    ),
}
_STRING_KEYS = ("OUT", "WEIGHTS", "WEIGHTS_FILE", "MODEL_PARAMS_DIR", "WEIGHTS_URL", "WEIGHTS_SHA256")

#: This command's exit statuses (``--help`` lists them).
EXIT_STATUSES = {
    0: "OUT was written (and, with CHECK=true, agrees with PyTorch)",
    1: "CHECK=true found the graph disagreeing with PyTorch beyond 1e-4 (OUT is kept for inspection)",
    2: _COMMON_STATUSES[2],
    3: _COMMON_STATUSES[3],
    130: "interrupted (Ctrl-C); no partly written file is left",
}


def help_text() -> str:
    """The ``--help`` text, in the style of every command's."""
    from .keys import help_text as keys_help_text

    return keys_help_text(
        USAGE,
        "Export the face segmentation network to ONNX (input data: N x 3 x H x W, the prepared image; N, H "
        f"and W dynamic). The older form {PROG} OUT [--params-dir DIR] [--weights NAME] [--opset N] [--check] "
        "still works. Also installed as face-segmentation-export.",
        KEYS,
        f"{PROG} OUT=best.onnx WEIGHTS=linknet34_oneflow WEIGHTS_FILE=runs/linknet/best.pt CHECK=true",
        EXIT_STATUSES,
    )


# The older flag form beside KEY=VALUE. A copy of convert.py's FlagParser and
# parse_keys_and_flags: a command may not import another command (tests/test_import_graph.py);
# both belong in keys.py, the parsing every command shares.
def _flag_parser():
    """The older form: ``OUT [--params-dir DIR] [--weights NAME] [--opset N] [--check]``."""
    p = FlagParser(USAGE, prog=PROG)
    p.add_argument("output", nargs="?")
    p.add_argument("--params-dir")
    p.add_argument("--weights")
    p.add_argument("--opset", type=int)
    p.add_argument("--check", action="store_const", const=True)
    return p


def parse_args(argv) -> dict:
    """Parse and check the arguments into ``{key: value}``.

    Raises:
        ConfigError: A missing, unknown or invalid key (a WEIGHTS_FILE that does not exist, an OUT
            that is not ``.onnx``).
    """
    from .keys import is_int

    cfg = parse_keys_and_flags(
        argv,
        KEYS,
        _STRING_KEYS,
        USAGE,
        _flag_parser(),
        {"output": "OUT", "params_dir": "MODEL_PARAMS_DIR", "weights": "WEIGHTS", "opset": "OPSET", "check": "CHECK"},
    )
    out = cfg["OUT"]
    if out is None:
        raise ConfigError(f"OUT is required, e.g. OUT=face_seg_fcn8s.onnx; {USAGE}")
    if Path(out).suffix.lower() != ".onnx":
        raise ConfigError(f"OUT={out}: the export writes ONNX; name the file <name>.onnx")
    if not isinstance(cfg["CHECK"], bool):
        raise ConfigError(f"CHECK={cfg['CHECK']!r} is invalid: expected true or false")
    if not (is_int(cfg["OPSET"]) and cfg["OPSET"] >= 1):
        raise ConfigError(f"OPSET={cfg['OPSET']!r} is invalid: expected an ONNX opset number such as 18")
    wf = cfg["WEIGHTS_FILE"]
    if wf is not None:
        if not Path(wf).expanduser().exists():
            raise ConfigError(f"WEIGHTS_FILE={wf}: no such file or folder; give the path of a weights file")
        cfg["WEIGHTS_FILE"] = str(Path(wf).expanduser())
    sha = cfg["WEIGHTS_SHA256"]
    if sha is not None:
        cfg["WEIGHTS_SHA256"] = sha = sha.strip().lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ConfigError(f"WEIGHTS_SHA256={sha!r} is invalid: expected 64 hexadecimal digits")
    return cfg


def _load_weights(cfg: dict):
    """``(state_dict, entry, source path)``: WEIGHTS_FILE's tensors, or the entry's weights found or
    downloaded in MODEL_PARAMS_DIR.

    Raises:
        WeightsError: The weights cannot be found, downloaded, read or verified (exit status 3).
    """
    from .weights.families import family_of_state_dict
    from .weights.registry import DEFAULT_FOR_FAMILY, find_or_download_state_dict, get_weights, load_state_dict_file

    entry = get_weights(cfg["WEIGHTS"])
    if cfg["WEIGHTS_FILE"] is not None:
        # Your own weights (e.g. a training run's best.pt) with this entry's architecture.
        path = Path(cfg["WEIGHTS_FILE"])
        state = load_state_dict_file(path)  # checked against the family its names say
        family = family_of_state_dict(state, str(path)).name
        if family != entry.family:  # a sound file with the wrong WEIGHTS: a mistake in the command
            raise ConfigError(
                f"WEIGHTS_FILE={cfg['WEIGHTS_FILE']} holds {family} weights, but WEIGHTS={entry.name} is "
                f"{entry.family}; add WEIGHTS={DEFAULT_FOR_FAMILY[family]}"
            )
        return state, entry, path
    state, path = find_or_download_state_dict(
        cfg["MODEL_PARAMS_DIR"], weights=entry, url=cfg["WEIGHTS_URL"], sha256=cfg["WEIGHTS_SHA256"]
    )
    return state, entry, path


def run(cfg: dict) -> int:
    """Export the weights ``cfg`` names to ``cfg["OUT"]`` (and check it with CHECK=true)."""
    state, entry, source = _load_weights(cfg)
    model = entry.arch.build(state, entry.preprocessing)
    del state  # the model holds the tensors now
    out = export_onnx(model, Path(cfg["OUT"]).expanduser(), opset=cfg["OPSET"])
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) from {source}")
    if cfg["CHECK"]:
        err = check_onnx(model, out)
        print(f"ONNX Runtime vs PyTorch: relative error {err:.2e}")
        if err >= 1e-4:
            print("error: the exported graph disagrees with PyTorch beyond 1e-4", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``face-segmentation-export``); returns the exit status (:data:`EXIT_STATUSES`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    interrupted = "face_segmentation_pytorch.export: interrupted (no partly written file is left)"
    return run_command(argv, help_text, lambda: run(parse_args(argv)), interrupted)


if __name__ == "__main__":
    sys.exit(main())
