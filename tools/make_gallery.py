"""Make a gallery picture: each sample image, its face heatmap, and the mask overlaid.

    pip install matplotlib
    python tools/make_gallery.py WEIGHTS_DIR assets/gallery.jpg [IMAGES ...]

Uses the library's own pipeline (``predict_pmaps``) with the weights found in (or
downloaded to) WEIGHTS_DIR; by default on the images in assets/samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import face_segmentation_pytorch as fsp

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights_dir")
    ap.add_argument("output")
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--weights", default=fsp.DEFAULT_WEIGHTS)
    args = ap.parse_args()
    images = args.images or sorted((ROOT / "assets" / "samples").iterdir())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state, source = fsp.find_or_download_state_dict(args.weights_dir, weights=args.weights)
    entry = fsp.weights.weights_for(state, args.weights)
    model = fsp.FaceSegmentationNet.from_state_dict(state, input_size=entry.input_size).eval()
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False)
    for row, path in zip(axes, images):
        img = fsp.load_image(path)
        with torch.no_grad():
            pmap = fsp.predict_pmaps(model, [img])[0].numpy()
        rgb = np.asarray(img).astype(np.float32)
        mask = pmap > 0.5
        overlay = rgb.copy()
        overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
        for ax, pic, title in zip(row, (rgb / 255, pmap, overlay / 255), (path.name, "face probability", "mask > 0.5")):
            ax.imshow(pic, cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle(f"face_segmentation_pytorch, weights {entry.name} ({source.name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=90)


if __name__ == "__main__":
    main()
