"""``python -m face_segmentation_pytorch.label.finetune KEY=VALUE ...``: the train command, fine-tuning
LinkNet34 with its BatchNorm.

The keys, outputs and exit statuses are the train command's
(``python -m face_segmentation_pytorch.train --help``). The one difference:
with ``INIT`` a weights file (a round's ``best.pt``, ``WEIGHTS_FILE``) or
``pretrained`` and a LinkNet34 entry, the network is built here as a plain
:class:`~face_segmentation_pytorch.LinkNet34` with those weights and handed to
:class:`~face_segmentation_pytorch.Trainer`. The trainer's own ``build_model``
builds that case through the family's inference builder, which folds BatchNorm
into the convolutions: it trains a network without BatchNorm and writes a
``best.pt`` whose tensors ``WEIGHTS_FILE`` cannot load (measured with the
trainer of 2026-12; see docs/label.md). Every other case runs the trainer exactly
as the train command does (this module does not import the command: commands sit
on top of the layers, tests/test_import_graph.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import run_command

__all__ = ["EXIT_STATUSES", "help_text", "linknet34_initial_state", "main"]

PROG = "face_segmentation_pytorch.label.finetune"
USAGE = f"usage: python -m {PROG} DATA_DIR=<folder> OUT_DIR=<folder> [KEY=VALUE ...] (the train command's keys)"


def linknet34_initial_state(cfg: dict) -> dict:
    """The LinkNet34 state_dict ``INIT`` names: a weights file, a trainer checkpoint, or the published weights.

    Raises:
        WeightsError: They cannot be found, read or fitted to LinkNet34.
    """
    import torch

    import face_segmentation_pytorch as fsp

    init = cfg["INIT"]
    if init == "pretrained":
        state, _ = fsp.find_or_download_state_dict(cfg["MODEL_PARAMS_DIR"], weights=cfg["WEIGHTS"], progress=False)
        return state
    path = Path(init)
    if path.is_file() and path.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - load_state_dict_file says what is wrong with it
            obj = None
        # A trainer checkpoint (last.pt) holds the model under "model".
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "format" in obj:
            state = dict(obj["model"])
            fsp.LinkNet34.from_state_dict({k: v.clone() for k, v in state.items()})  # fits, or raises
            return state
    return fsp.load_state_dict_file(path, "linknet34")


#: The train command's exit statuses (this runs the same trainer).
EXIT_STATUSES = {
    0: "trained every epoch (or stopped after STOP_AFTER epochs; RESUME=true continues)",
    1: "the loss became NaN or infinite (lower LR); last.pt holds the last good epoch",
    2: "a mistake in the command or the data: one 'error:' line says what to change",
    3: "initial weights (INIT=pretrained / a file) could not be obtained or verified",
    130: "interrupted (Ctrl-C); last.pt is saved and RESUME=true continues the same run",
}


def help_text() -> str:
    from ..keys import help_text as keys_help_text
    from ..training.trainer import TRAIN_KEYS

    return keys_help_text(
        USAGE,
        "The train command as the label page runs it (see the module text): fine-tune on PROJECT/data. "
        "Writes last.pt, best.pt, metrics.jsonl and config.yaml to OUT_DIR.",
        TRAIN_KEYS,
        f"python -m {PROG} DATA_DIR=labels/clip1/data OUT_DIR=labels/clip1/runs/round-001 INIT=my.pt EPOCHS=20",
        EXIT_STATUSES,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; the train command's exit statuses."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def body() -> int:
        import face_segmentation_pytorch as fsp

        from ..keys import parse_dotlist
        from ..training.trainer import (
            TRAIN_KEYS,
            TRAIN_STRING_KEYS,
            TrainingDiverged,
            check_train_config,
        )

        cfg = parse_dotlist(argv, TRAIN_KEYS, TRAIN_STRING_KEYS, USAGE)
        checked = check_train_config(cfg)
        model = None
        if fsp.WEIGHTS[checked["WEIGHTS"]].family == "linknet34" and checked["INIT"] not in ("scratch", "imagenet"):
            state = linknet34_initial_state(checked)

            def linknet34_with_batchnorm():
                # Copies: the trainer updates the tensors in place.
                return fsp.LinkNet34.from_state_dict({k: v.clone() for k, v in state.items()})

            model = linknet34_with_batchnorm
        try:
            result = fsp.Trainer(cfg, model=model).run()
        except TrainingDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 130 if result.interrupted else 0

    return run_command(argv, help_text, body, f"{PROG}: interrupted; last.pt holds the last saved position")


if __name__ == "__main__":
    sys.exit(main())
