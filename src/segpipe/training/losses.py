"""Losses by name, and weighted sums of them (``train.loss``: ``ce+dice``, ``0.5*ce+dice``).

Each loss takes float logits (B, C', H, W) and integer labels (B, H, W), where C' is 1 for two
classes (one sigmoid channel) and N for N classes (softmax). Pixels labelled
:data:`~segpipe.constants.IGNORE` count in no term.

- ``ce``: cross-entropy; for two classes it is binary cross-entropy on the one channel.
- ``bce``: binary cross-entropy (the tutorial's ``BCEWithLogitsLoss``); two classes only.
- ``dice``, ``focal``, ``lovasz``: segmentation-models-pytorch's losses.

``train.class_weights`` (one per class) weight the pixels of ``ce``/``bce`` (a weighted mean,
as ``torch.nn.CrossEntropyLoss(weight=...)``), and, with more than two classes, the classes of
``dice`` and ``focal``. ``lovasz`` is unweighted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from segpipe.config import loss_terms
from segpipe.constants import IGNORE

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(num_classes: int, weights: torch.Tensor | None) -> LossFn:
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if num_classes > 2:
            w = weights.to(logits.device) if weights is not None else None
            return F.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE)
        valid = labels != IGNORE
        target = (labels == 1).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        pixel_weights = valid.to(logits.dtype)
        if weights is not None:
            pixel_weights = pixel_weights * weights.to(logits.device)[labels.clamp(max=1)]
        return (per_pixel * pixel_weights).sum() / pixel_weights.sum().clamp(min=1e-12)

    return loss


def _smp_loss(name: str, num_classes: int, weights: Sequence[float] | None) -> LossFn:
    from segmentation_models_pytorch import losses

    mode = "binary" if num_classes == 2 else "multiclass"
    class_weights = list(weights) if weights is not None and num_classes > 2 else None
    if name == "dice":
        fn = losses.DiceLoss(
            mode, from_logits=True, ignore_index=IGNORE, class_weights=class_weights
        )
    elif name == "focal":
        fn = losses.FocalLoss(mode, ignore_index=IGNORE, class_weights=class_weights)
    else:
        fn = losses.LovaszLoss(mode, ignore_index=IGNORE)
    return fn


def build_loss(spec: str, num_classes: int, class_weights: Sequence[float] | None = None) -> LossFn:
    """The loss ``spec`` names (see the module docstring), for ``num_classes`` classes.

    Raises:
        SegpipeError: an unknown name, or ``bce`` with more than two classes.
    """
    weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    terms: list[tuple[float, LossFn]] = []
    for weight, name in loss_terms(spec, num_classes):
        if name in ("ce", "bce"):
            terms.append((weight, _cross_entropy(num_classes, weights)))
        else:
            terms.append((weight, _smp_loss(name, num_classes, class_weights)))

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros(())
        for weight, fn in terms:
            total = total + weight * fn(logits, labels)
        return total

    return loss
