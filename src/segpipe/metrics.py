"""Segmentation metrics: count tp/fp/fn/tn per class, then reduce. The only implementation.

Used by validation during training and by the evaluate stage, so both report the same Dice.

Reductions:
- dataset level (``dice``, ``iou``, ``pixel_accuracy``): counts are summed over every pixel of
  every image first, then reduced once (per class, then averaged over the foreground classes;
  for binary that is the foreground class alone);
- per image (``dice_per_image``, ``iou_per_image``): each image's foreground counts give one
  score, and the scores are averaged. An image whose truth and prediction are both empty
  scores 1.0 (a correct "nothing here"); one with an empty truth and any predicted foreground
  scores 0.0.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image confusion matrices.

    Shape:
        pred, target: (B, H, W) integer class indices.
        returns: (B, C, C) int64; rows are the true class, columns the predicted class.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    batch = pred.shape[0]
    flat = target.reshape(batch, -1).long() * num_classes + pred.reshape(batch, -1).long()
    offsets = torch.arange(batch, device=flat.device).unsqueeze(1) * num_classes**2
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=batch * num_classes**2)
    return counts.reshape(batch, num_classes, num_classes)


def stat_scores(confusion: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(tp, fp, fn, tn) per class from confusion matrices of shape (..., C, C)."""
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    fp = confusion.sum(dim=-2) - tp
    fn = confusion.sum(dim=-1) - tp
    tn = confusion.sum(dim=(-2, -1)).unsqueeze(-1) - tp - fp - fn
    return tp, fp, fn, tn


def dice_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """2tp / (2tp + fp + fn); 1.0 where truth and prediction are both empty."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom))


def iou_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """tp / (tp + fp + fn); 1.0 where truth and prediction are both empty."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    denom = tp + fp + fn
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.ones_like(denom))


def _per_image_scores(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU from (N, C, 3) tp/fp/fn counts, summed over foreground classes."""
    tp, fp, fn = (counts[:, 1:, k].sum(-1) for k in range(3))
    return dice_score(tp, fp, fn), iou_score(tp, fp, fn)


class SegmentationMetrics:
    """Accumulates counts over a whole dataset; :meth:`compute` reduces them once."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.image_counts: list[np.ndarray] = []  # (C, 3): tp, fp, fn of each class, per image

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[list[float], list[float]]:
        """Add a batch of label maps (B, H, W). Returns the batch's per-image Dice and IoU."""
        confusion = confusion_matrix(pred, target, self.num_classes).cpu()
        self.confusion += confusion.sum(dim=0)
        tp, fp, fn, _ = stat_scores(confusion)
        counts = torch.stack([tp, fp, fn], dim=-1)
        self.image_counts += list(counts.numpy())
        dice, iou = _per_image_scores(counts)
        return dice.tolist(), iou.tolist()

    def merge_processes(self) -> None:
        """Under torch.distributed: sum the confusion matrices of all ranks and gather their
        per-image counts, so :meth:`compute` gives what one process would over all images."""
        from segpipe.distributed import gather_lists, sum_over_ranks

        self.confusion = sum_over_ranks(self.confusion)
        self.image_counts = gather_lists(self.image_counts)

    def compute(self) -> dict[str, float]:
        """Dataset-level and per-image scores (see the module docstring)."""
        tp, fp, fn, _ = stat_scores(self.confusion)
        total = self.confusion.sum().item()
        nan = float("nan")
        if self.image_counts:
            dice, iou = _per_image_scores(torch.from_numpy(np.stack(self.image_counts)))
            dice_per_image, iou_per_image = dice.mean().item(), iou.mean().item()
        else:
            dice_per_image = iou_per_image = nan
        return {
            "dice": dice_score(tp, fp, fn)[1:].mean().item(),
            "iou": iou_score(tp, fp, fn)[1:].mean().item(),
            "pixel_accuracy": self.confusion.trace().item() / total if total else nan,
            "dice_per_image": dice_per_image,
            "iou_per_image": iou_per_image,
        }

    def bootstrap_interval(
        self, resamples: int = 1000, seed: int = 0, level: float = 0.95
    ) -> dict[str, float]:
        """Percentile bootstrap interval of the dataset-level Dice and IoU over images.

        Images are drawn with replacement ``resamples`` times; each draw's counts are summed and
        reduced exactly like :meth:`compute`. Seeded, so the interval is reproducible.
        """
        counts = np.stack(self.image_counts).astype(np.int64)  # (N, C, 3)
        n = len(counts)
        rng = np.random.default_rng(seed)
        dice, iou = [], []
        for start in range(0, resamples, 100):  # chunks bound memory for large test sets
            draws = min(100, resamples - start)
            weights = rng.multinomial(n, np.full(n, 1.0 / n), size=draws)  # (R, N)
            sums = torch.from_numpy(np.einsum("rn,nck->rck", weights, counts))
            tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
            dice += dice_score(tp, fp, fn)[:, 1:].mean(-1).tolist()
            iou += iou_score(tp, fp, fn)[:, 1:].mean(-1).tolist()
        tail = (1 - level) / 2 * 100
        pct = int(round(level * 100))
        out = {}
        for name, values in (("dice", dice), ("iou", iou)):
            low, high = np.percentile(values, [tail, 100 - tail])
            out[f"{name}_ci{pct}_low"], out[f"{name}_ci{pct}_high"] = float(low), float(high)
        return out
