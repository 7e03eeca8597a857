"""``python -m face_segmentation_pytorch.train KEY=VALUE ...``: train a face segmentation network.

The keys are :data:`~face_segmentation_pytorch.training.trainer.TRAIN_KEYS`
(``--help`` lists them). Exit status: 0 trained (or stopped by STOP_AFTER),
1 the loss diverged, 2 a mistake in the command or the data (one ``error:``
line, or one error listing every data problem), 3 initial weights could not
be obtained or verified, 130 Ctrl-C (``last.pt`` saved; ``RESUME=true
OUT_DIR=<folder>`` continues exactly, with the run's saved settings).
"""

from __future__ import annotations

import sys
import types

from .errors import run_command

__all__ = ["main", "EXIT_STATUSES", "USAGE"]

USAGE = "usage: python -m face_segmentation_pytorch.train DATA_DIR=<folder> OUT_DIR=<folder> [KEY=VALUE ...]"

#: This command's exit statuses (``--help`` lists them).
EXIT_STATUSES = {
    0: "trained every epoch (or stopped after STOP_AFTER epochs; RESUME=true continues)",
    1: "the loss became NaN or infinite (lower LR); last.pt holds the last good epoch",
    2: "a mistake in the command or the data: one 'error:' line (data problems: all listed) says what to change",
    3: "initial weights (INIT=pretrained / imagenet / a file) could not be obtained or verified",
    130: "interrupted (Ctrl-C); last.pt is saved and RESUME=true continues the same run",
}


def help_text() -> str:
    from .keys import help_text as _help
    from .training.trainer import TRAIN_KEYS

    return _help(
        USAGE,
        "Train LinkNet34 or FCN-8s on face masks, the LinkNet34 work's recipe: soft-Jaccard loss, SGD "
        "(momentum 0.9, weight decay 5e-4), batch 4, flips and rotations up to 15 degrees, one cosine "
        "learning-rate curve over the run, the data shuffled every epoch. Writes last.pt, best.pt (by "
        "validation mean IoU), metrics.jsonl and config.yaml to OUT_DIR.",
        TRAIN_KEYS,
        "python -m face_segmentation_pytorch.train DATA_DIR=faceseg_data OUT_DIR=runs/linknet INIT=imagenet "
        "MODEL_PARAMS_DIR=weights",
        EXIT_STATUSES,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def body() -> int:
        from .keys import parse_dotlist
        from .training.trainer import TRAIN_KEYS, TRAIN_STRING_KEYS, Trainer, TrainingDiverged

        cfg = parse_dotlist(argv, TRAIN_KEYS, TRAIN_STRING_KEYS, USAGE)
        # Only the keys typed: RESUME=true takes the others from the run in OUT_DIR.
        typed = {arg.split("=", 1)[0] for arg in argv}
        try:
            result = Trainer({k: v for k, v in cfg.items() if k in typed}).run()
        except TrainingDiverged as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 130 if result.interrupted else 0

    return run_command(
        argv,
        help_text,
        body,
        "face_segmentation_pytorch.train: interrupted; nothing more was saved (last.pt, if any, holds the "
        "last saved position)",
    )


class _CallableModule(types.ModuleType):
    """Importing ``face_segmentation_pytorch.train`` binds this module to the
    package's ``train`` attribute (Python's import system does that), where
    :func:`~face_segmentation_pytorch.training.train` lives; calling the
    module forwards to that function, so ``fsp.train(...)`` works either way."""

    def __call__(self, *args, **kwargs):
        from .training.trainer import train as _train

        return _train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
