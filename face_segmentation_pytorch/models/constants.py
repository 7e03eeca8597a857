"""Numbers the models share with the input preparation above them.

Kept apart so that the preprocessing can use them without importing a network
(and a network's legacy ``img_to_input`` can use the preprocessing without a cycle).
"""

from __future__ import annotations

__all__ = ["BGR_MEAN"]

#: The authors' Caffe deploy mean, subtracted from BGR pixels in 0..255 units.
BGR_MEAN: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)
