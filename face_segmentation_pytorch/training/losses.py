"""The recipe's loss: BCE with logits mixed with the log of a soft Jaccard index.

``loss = (1 - w) * BCE(logit, target) - w * log((I + eps) / (U - I + eps))``
with ``I = sum(sigmoid(logit) * target)``, ``U = sum(sigmoid(logit)) + sum(target)``
summed over the whole batch and ``eps = 1e-15``. The PyTorch baseline and the
OneFlow eager version use ``w = 1`` (pure soft Jaccard), the old OneFlow
version ``w = 0.5``.

Both families train on one face logit per pixel: LinkNet34's output, and for
FCN-8s the face score minus the background score (the logit whose sigmoid is
:func:`~face_segmentation_pytorch.models.fcn8s.scores_to_pmap`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["JACCARD_EPS", "face_logit", "soft_jaccard_loss", "SegmentationLoss"]

#: The recipe's epsilon in the soft Jaccard term.
JACCARD_EPS = 1e-15


def face_logit(output: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` network output -> ``(N, H, W)`` face logit.

    One channel (LinkNet34): that channel. Two or more (FCN-8s scores, channel
    0 background): the best non-background score minus background, so
    ``sigmoid`` of it is ``scores_to_pmap`` with ``face_channel=None``.
    """
    if output.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) network output, got shape {tuple(output.shape)}")
    if output.shape[1] == 1:
        return output[:, 0]
    if output.shape[1] == 2:
        return output[:, 1] - output[:, 0]
    return output[:, 1:].amax(dim=1) - output[:, 0]


def soft_jaccard_loss(
    logit: torch.Tensor, target: torch.Tensor, jaccard_weight: float = 1.0, eps: float = JACCARD_EPS
) -> torch.Tensor:
    """The recipe's loss over a batch (a scalar tensor).

    Args:
        logit: Face logits, any shape.
        target: Same shape, 1 for face and 0 elsewhere (float).
        jaccard_weight: ``w`` in ``(1 - w) * BCE - w * log(soft Jaccard)``.
        eps: Added to both sides of the Jaccard ratio.
    """
    if logit.shape != target.shape:
        raise ValueError(f"logit and target differ in shape: {tuple(logit.shape)} vs {tuple(target.shape)}")
    # Sums and the log in float32 even under autocast: a float16 sum over a
    # batch of 256x256 maps overflows, and 1e-15 is below float16's range.
    logit = logit.float()
    target = target.float()
    loss = logit.new_zeros(())
    if jaccard_weight < 1.0:
        loss = loss + (1.0 - jaccard_weight) * F.binary_cross_entropy_with_logits(logit, target)
    if jaccard_weight > 0.0:
        p = torch.sigmoid(logit)
        inter = (p * target).sum()
        union = p.sum() + target.sum()
        loss = loss - jaccard_weight * torch.log((inter + eps) / (union - inter + eps))
    return loss


class SegmentationLoss(nn.Module):
    """:func:`soft_jaccard_loss` on :func:`face_logit` of a network's output.

    Args:
        jaccard_weight: ``w`` (1 in the recipe).
    """

    def __init__(self, jaccard_weight: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= jaccard_weight <= 1.0:
            raise ValueError(f"jaccard_weight must be in [0, 1], got {jaccard_weight}")
        self.jaccard_weight = float(jaccard_weight)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``output`` ``(N, C, H, W)``, ``target`` ``(N, H, W)`` in {0, 1}."""
        return soft_jaccard_loss(face_logit(output), target, self.jaccard_weight)
