"""The package's former middle layer, kept as import paths.

Its modules moved to the folders that show the layers (issue 23):
``files/`` (atomic writes, image and mask files, progress), ``segmentation/``
(preprocessing, forward, assembling, precision, post-processing, cropping,
drawing, the :class:`FaceSegmenter`), ``weights/`` (the registry, the families,
the verified downloader), ``jobs/``
(the folder job, its worker pools and the Ray engine). Each old module path,
``face_segmentation_pytorch.pipeline.<name>``, is the moved module itself, so
scripts and pickles that name it keep working. The video job still lives here.
"""

from __future__ import annotations

import importlib

#: Old module name -> where it lives now.
MOVED = {
    "atomic": "files.atomic",
    "imageio": "files.imageio",
    "masks": "files.masks",
    "progress": "files.progress",
    "preprocess": "segmentation.preprocess",
    "inference": "segmentation.inference",
    "segmenter": "segmentation.segmenter",
    "precision": "segmentation.precision",
    "postprocess": "segmentation.postprocess",
    "crop": "segmentation.crop",
    "render": "segmentation.render",
    "plot": "segmentation.plot",
    "families": "weights.families",
    "weights": "weights.registry",
    "download": "weights.download",
    "workers": "jobs.workers",
    "ray_engine": "jobs.ray_engine",
}


def __getattr__(name: str):
    # ``fsp.pipeline.render`` without importing it first, as before the move.
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
