"""Debug figures with matplotlib: images with their heatmaps blended in, and masks.

:func:`plt_debug` is the earlier PyTorch port's plotting helper. matplotlib is
an optional dependency (the ``plot`` extra, ``pip install
"face_segmentation_pytorch[plot]"``); it is imported only when
:func:`plt_debug` is called, and its absence raises
:class:`PlotDependencyError` naming the extra. The figure is a plain
:class:`matplotlib.figure.Figure`, made without pyplot, so it needs no display
and no particular backend: save it with ``fig.savefig("debug.png")``.

:func:`blend_heatmap`, the colour blend of the top row, needs only numpy and
Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageColor

from ..errors import FaceSegmentationError

__all__ = ["PlotDependencyError", "PLOT_EXTRA", "as_rgb_uint8", "as_heatmap", "blend_heatmap", "plt_debug"]

#: The pip command that installs what :func:`plt_debug` needs.
PLOT_EXTRA = 'pip install "face_segmentation_pytorch[plot]"'


class PlotDependencyError(FaceSegmentationError, ImportError):
    """matplotlib, needed for plotting, is not installed (the ``plot`` extra)."""


def _matplotlib_figure():
    """Return :class:`matplotlib.figure.Figure`, or raise :class:`PlotDependencyError`."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError(f"plt_debug needs matplotlib: {PLOT_EXTRA}") from None
    return Figure


def _to_numpy(x) -> np.ndarray:
    """numpy view of an array, a (CPU or GPU) tensor or anything array-like."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_rgb_uint8(img) -> np.ndarray:
    """Bring an image to an ``(H, W, 3)`` uint8 RGB array.

    Args:
        img: A PIL image (any mode; converted to RGB), or an array or tensor
            shaped ``(H, W, 3)``, ``(3, H, W)`` (channels first, as PyTorch
            keeps images) or ``(H, W)`` (grey). Integer values are taken as
            0..255; floating values as 0..1 (matplotlib's convention) and
            clipped to it.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        ValueError: Another shape.
    """
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    arr = _to_numpy(img)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"expected a PIL image or an (H, W, 3), (3, H, W) or (H, W) image array, got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def as_heatmap(heatmap) -> np.ndarray:
    """Bring a face probability map to an ``(H, W)`` float32 array in [0, 1].

    Args:
        heatmap: Array or tensor shaped ``(H, W)`` or ``(1, H, W)``, with
            floating values in [0, 1] (as ``model(t, as_pmap=True)[i]``
            returns), bools, or uint8 values 0..255 (as heatmap PNGs hold).

    Raises:
        ValueError: Another shape, or floating values outside [0, 1].
    """
    h = _to_numpy(heatmap)
    if h.ndim == 3 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2:
        raise ValueError(f"expected an (H, W) heatmap, got shape {h.shape}")
    if h.dtype == np.uint8:
        return h.astype(np.float32) / 255.0
    h = h.astype(np.float32)
    if h.size and (np.nanmin(h) < -1e-6 or np.nanmax(h) > 1 + 1e-6):
        raise ValueError(f"heatmap values must lie in [0, 1], got {np.nanmin(h):g}..{np.nanmax(h):g}")
    return np.clip(h, 0.0, 1.0)


def _rgb_color(color) -> tuple[int, int, int]:
    if isinstance(color, str):
        return ImageColor.getrgb(color)[:3]
    r, g, b = (int(c) for c in color)
    return r, g, b


def blend_heatmap(img, heatmap, color: str | Sequence[int] = "red", alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` over an image, weighted per pixel by its heatmap.

    Each output pixel is ``round(img * (1 - a) + color * a)`` with
    ``a = heatmap * alpha``, computed in float64 and rounded half to even:
    the top row of :func:`plt_debug`. (:func:`~face_segmentation_pytorch.pipeline.render.overlay`
    blends the same way in float32, which can differ by one grey level.)

    Args:
        img: Image, see :func:`as_rgb_uint8`.
        heatmap: ``(H, W)`` face probability, see :func:`as_heatmap`; same
            height and width as ``img``.
        color: A colour name or ``#rrggbb`` string (Pillow's
            ``ImageColor``), or an ``(r, g, b)`` triple of 0..255.
        alpha: Opacity of ``color`` where the heatmap is 1.

    Returns:
        ``(H, W, 3)`` uint8 RGB array.

    Raises:
        ValueError: The image and heatmap differ in size, or a bad shape or
            colour.
    """
    rgb = as_rgb_uint8(img)
    h = as_heatmap(heatmap)
    if h.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {h.shape} and image {rgb.shape[:2]} differ in size")
    a = h.astype(np.float64)[..., None] * float(alpha)
    out = rgb.astype(np.float64) * (1.0 - a) + np.asarray(_rgb_color(color), np.float64) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plt_debug(
    imgs,
    heatmaps,
    mask_color: str | Sequence[int] = "red",
    color_alpha: float = 0.5,
    heatmap_thresh: float = 0.5,
    *,
    column_width: float = 3.0,
    pyplot: bool = False,
):
    """Figure of images with their heatmaps blended in (top) and masks (bottom).

    The earlier PyTorch port's debug plot. One column per image; images may
    differ in size. Needs matplotlib (``pip install
    "face_segmentation_pytorch[plot]"``).

    Args:
        imgs: Sequence of images: PIL images, ``(H, W, 3)`` uint8 arrays, or
            ``(3, H, W)`` RGB tensors (see :func:`as_rgb_uint8`).
        heatmaps: One ``(H, W)`` face probability map in [0, 1] per image
            (arrays or tensors, or an ``(N, H, W)`` tensor such as
            ``model(t, as_pmap=True)``), each the size of its image.
        mask_color: Colour of the face in the top row (name, ``#rrggbb`` or
            ``(r, g, b)``).
        color_alpha: Opacity of ``mask_color`` where the heatmap is 1; the
            blend weight of a pixel is ``heatmap * color_alpha``.
        heatmap_thresh: The bottom row shows ``heatmap >= heatmap_thresh``
            (white face, black background).
        column_width: Figure width per image, in inches (height is twice it).
        pyplot: Create the figure through ``matplotlib.pyplot`` so that
            ``plt.show()`` displays it (as in the earlier port); this needs a
            usable backend. By default a bare ``Figure`` is made, which needs
            none.

    Returns:
        ``fig, (mix_axes, mask_axes)``: the :class:`matplotlib.figure.Figure`
        and two 1-d arrays with one axes per image, the blended images (top
        row) and the thresholded heatmaps (bottom row). Save with
        ``fig.savefig(path)``.

    Raises:
        PlotDependencyError: matplotlib is not installed (also an ImportError).
        ValueError: No images, counts or sizes that do not match, or values
            out of range.
    """
    imgs = list(imgs)
    heatmaps = list(heatmaps)
    if not imgs:
        raise ValueError("plt_debug needs at least one image")
    if len(imgs) != len(heatmaps):
        raise ValueError(f"got {len(imgs)} images but {len(heatmaps)} heatmaps")
    mixes, masks = [], []
    for i, (img, hm) in enumerate(zip(imgs, heatmaps)):
        try:
            mixes.append(blend_heatmap(img, hm, mask_color, color_alpha))
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from None
        masks.append(as_heatmap(hm) >= heatmap_thresh)

    n = len(imgs)
    size = (column_width * n, column_width * 2)
    if pyplot:
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise PlotDependencyError(f"plt_debug needs matplotlib: {PLOT_EXTRA}") from None
        fig = plt.figure(figsize=size)
    else:
        fig = _matplotlib_figure()(figsize=size)
    axes = fig.subplots(nrows=2, ncols=n, squeeze=False)
    for ax, mix in zip(axes[0], mixes):
        ax.imshow(mix, interpolation="nearest")
    for ax, mask in zip(axes[1], masks):
        ax.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, (axes[0], axes[1])
