"""Losses by name. Each takes logits (B, C', H, W) and integer labels (B, H, W)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from segpipe.errors import SegpipeError

LOSSES = ("bce", "dice", "bce+dice")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(name: str, num_classes: int) -> LossFn:
    """A loss by name: ``bce`` (the tutorial's BCEWithLogitsLoss), ``dice``, or ``bce+dice``.

    Raises:
        SegpipeError: for an unknown name or a loss that does not fit the number of classes.
    """
    from segmentation_models_pytorch.losses import DiceLoss

    if name not in LOSSES:
        raise SegpipeError(f"train.loss: unknown loss {name!r} (valid: {', '.join(LOSSES)})")
    if num_classes != 2:
        raise SegpipeError(
            f"train.loss: {name!r} is implemented for binary segmentation; data.classes lists "
            f"{num_classes} classes"
        )
    bce = nn.BCEWithLogitsLoss()
    dice = DiceLoss(mode="binary", from_logits=True)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels.unsqueeze(1).to(logits.dtype)
        total = logits.new_zeros(())
        if "bce" in name:
            total = total + bce(logits, target)
        if "dice" in name:
            total = total + dice(logits, target)
        return total

    return loss
