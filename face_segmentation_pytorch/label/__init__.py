"""The mask-fixing loop: label frames in the browser, fine-tune, apply to the whole source, repeat.

``python -m face_segmentation_pytorch.label PROJECT=<folder> SOURCE=<video, folder or glob>``
starts a local page (standard library HTTP server, plain HTML + JavaScript, no
build step and nothing from the network) where each frame opens with the
current model's mask to correct; saved masks go to ``PROJECT/data`` in the
layout ``python -m face_segmentation_pytorch.train`` reads. docs/label.md has
the loop in five steps and the design notes.

Modules: :mod:`.command` (keys, start), :mod:`.server` (HTTP, token, limits),
:mod:`.app` (what the page can do), :mod:`.project` (the folder),
:mod:`.frames` (frames by index, PyAV), :mod:`.predictor` (current model,
scan), :mod:`.suggest` (which frames next), :mod:`.jobs` (background
processes: the fine-tune is the train command).
"""

from __future__ import annotations

from .command import KEYS, main

__all__ = ["KEYS", "main"]
