"""The video command's ``MASKS_DIR``: one PNG per frame, named by the frame.

A mask is named after its frame, never after its position in the run: the
source image's stem for an image sequence (``f005.png`` for ``f005.jpg``), the
zero-padded frame index for a video (``000005.png``). A frame that cannot be
read leaves its mask out and shifts no other, and a run that stopped can be
run again: masks already there are kept (:meth:`MaskSink.has`), the batch
command's resume rule. Each file is written whole under a temporary name and
renamed, so a mask that exists is a complete one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .video_av import VideoError
from .video_worker import Worker

__all__ = ["MaskSink", "mask_png", "check_masks_dir"]


def mask_png(pmap: np.ndarray, mask: np.ndarray | None, alpha: np.ndarray | None) -> np.ndarray:
    """The 8-bit picture written for a frame: the feathered alpha, else the 0/255
    mask, else the probability heatmap (``round(255 * p)``), as the batch command
    writes ``__mask.png`` and ``__heatmap.png``."""
    from .render import heatmap_to_png_array

    if alpha is not None:
        return heatmap_to_png_array(alpha, 8)
    if mask is not None:
        return mask.astype(np.uint8) * 255
    return heatmap_to_png_array(pmap, 8)


def check_masks_dir(folder: Path, names: Iterable[str], sources: Iterable[Path], shown: str) -> None:
    """Refuse a ``MASKS_DIR`` whose masks would be written over source frames.

    Args:
        folder: The masks' folder.
        names: The masks' names (without ``.png``) the run can write.
        sources: The source's files.
        shown: ``MASKS_DIR`` as the user wrote it, for the message.

    Raises:
        VideoError: A mask's path is one of the source's files.
    """
    try:
        targets = {os.path.realpath(folder / f"{n}.png") for n in names}
    except OSError:
        return
    hit = sorted(p for p in sources if os.path.realpath(p) in targets)
    if hit:
        example = folder.parent / f"{folder.name}_masks"
        raise VideoError(
            f"MASKS_DIR={shown}: the masks would be written over the source frames ({hit[0].name}"
            f"{f' and {len(hit) - 1} more' if len(hit) > 1 else ''}); give another folder, e.g. MASKS_DIR={example}"
        )


class MaskSink:
    """Write one mask PNG per frame in a writer thread (see the module's text).

    Args:
        folder: Where the masks go (it exists).
        overwrite: Write masks that are already there again (``OVERWRITE=true``).
        queue_size: Frames waiting for the writer at most.
    """

    def __init__(self, folder: str | os.PathLike, *, overwrite: bool = False, queue_size: int = 8) -> None:
        self.folder = Path(folder)
        self.overwrite = overwrite
        #: Masks found already there and kept.
        self.kept = 0
        self._worker = Worker(self._write, "fsp-mask-write", queue_size)

    @property
    def count(self) -> int:
        """Masks written by this run."""
        return self._worker.count

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.png"

    def has(self, name: str) -> bool:
        """True when this frame's mask is there and is kept (not ``overwrite``)."""
        return not self.overwrite and self.path(name).is_file()

    def keep(self, name: str) -> bool:
        """:meth:`has`, counting the mask in :attr:`kept` when it is (a frame a
        resumed run does not segment again)."""
        if self.has(name):
            self.kept += 1
            return True
        return False

    def _write(self, item) -> None:
        from .atomic import save_atomic

        name, pmap, mask, alpha = item
        import cv2

        ok, data = cv2.imencode(".png", mask_png(pmap, mask, alpha))
        if not ok:
            raise OSError(f"cannot encode the mask of frame {name} as PNG")
        save_atomic(self.path(name), lambda f: f.write(data.tobytes()))

    def put(self, name: str, pmap: np.ndarray, mask: np.ndarray | None, alpha: np.ndarray | None) -> None:
        """Queue a frame's mask; one that is there already is kept (and counted in :attr:`kept`)."""
        if self.keep(name):
            return
        self._worker.put((name, pmap, mask, alpha))

    def finish(self) -> None:
        """Write what is queued and stop the thread."""
        self._worker.finish()
