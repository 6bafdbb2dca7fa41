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

from segpipe.constants import IGNORE
from segpipe.errors import SegpipeError

LOSS_TERMS = ("ce", "bce", "dice", "focal", "lovasz")
"""Loss names; ``train.loss`` is one of them or a weighted sum such as ``ce+dice``."""


def parse_loss(spec: str) -> tuple[tuple[float, str], ...]:
    """``train.loss`` as (weight, name) terms: ``"ce+0.5*dice"`` is ``((1, "ce"), (0.5, "dice"))``.

    Raises:
        SegpipeError: an unknown name, a bad weight or an empty term.
    """
    terms = []
    for part in str(spec).split("+"):
        weight_text, _, name = part.strip().rpartition("*")
        name = name.strip()
        if name not in LOSS_TERMS:
            raise SegpipeError(
                f"train.loss: unknown loss {name!r} in {spec!r} (valid: {', '.join(LOSS_TERMS)}, "
                "or a weighted sum such as ce+dice or 0.5*ce+dice)"
            )
        weight_text = weight_text.strip()
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise SegpipeError(f"train.loss: bad weight {weight_text!r} in {spec!r}") from None
        if not weight > 0:
            raise SegpipeError(f"train.loss: weights must be > 0, got {weight_text} in {spec!r}")
        terms.append((weight, name))
    return tuple(terms)


def loss_terms(spec: str, num_classes: int) -> tuple[tuple[float, str], ...]:
    """:func:`parse_loss`, for ``num_classes`` classes: ``bce`` is the two-class loss.

    Raises:
        SegpipeError: as :func:`parse_loss`, or ``bce`` with more than two classes.
    """
    terms = parse_loss(spec)
    if num_classes > 2 and any(name == "bce" for _, name in terms):
        raise SegpipeError(
            f"train.loss: 'bce' is the two-class loss; with {num_classes} classes use 'ce' "
            "(e.g. ce+dice)"
        )
    return terms


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
