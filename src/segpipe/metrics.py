"""Segmentation metrics: count tp/fp/fn per class, then reduce. The only implementation.

Used by validation during training and by the evaluate stage, so both report the same Dice.
Pixels labelled :data:`~segpipe.constants.IGNORE` in the truth are left out of every count.

Per class c (counts summed over every pixel of every image, "dataset level"):
  dice/c = 2tp / (2tp + fp + fn), iou/c = tp / (tp + fp + fn),
  precision/c = tp / (tp + fp), recall/c = tp / (tp + fn).
A class absent from both truth and prediction (tp + fp + fn = 0) has no score (NaN, written as
null) and is left out of the means; otherwise a 0/0 precision or recall is 0.

Reductions over the "averaged classes" (the foreground classes, or all classes with
``include_background``; for two classes without background that is the foreground alone):
- ``dice``, ``iou``, ``precision``, ``recall``: the mean of the per-class scores (macro);
- ``dice_micro``, ``iou_micro``: tp, fp and fn summed over the averaged classes, then one score;
- ``dice_per_image``, ``iou_per_image`` (imagewise): each image's tp, fp and fn summed over the
  averaged classes give one score per image, and the scores are averaged over images. An image
  with nothing to find and nothing predicted scores 1.0 (a correct "nothing here");
- ``pixel_accuracy``: the share of (non-ignored) pixels whose class is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segpipe.constants import IGNORE

SCORES = ("dice", "iou", "precision", "recall")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image confusion matrices; target pixels equal to IGNORE are not counted.

    Shape:
        pred, target: (B, H, W) integer class indices.
        returns: (B, C, C) int64; rows are the true class, columns the predicted class.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    batch, cells = pred.shape[0], num_classes**2
    target, pred = target.reshape(batch, -1).long(), pred.reshape(batch, -1).long()
    # Ignored pixels go to an extra bin per image, dropped below.
    flat = torch.where(target == IGNORE, cells, target * num_classes + pred)
    offsets = torch.arange(batch, device=flat.device).unsqueeze(1) * (cells + 1)
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=batch * (cells + 1))
    return counts.reshape(batch, cells + 1)[:, :cells].reshape(batch, num_classes, num_classes)


def stat_scores(confusion: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(tp, fp, fn, tn) per class from confusion matrices of shape (..., C, C)."""
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    fp = confusion.sum(dim=-2) - tp
    fn = confusion.sum(dim=-1) - tp
    tn = confusion.sum(dim=(-2, -1)).unsqueeze(-1) - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: torch.Tensor, den: torch.Tensor, empty: float) -> torch.Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(den, empty))


def dice_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """2tp / (2tp + fp + fn); 1.0 where truth and prediction are both empty."""
    return _ratio(2 * tp, 2 * tp + fp + fn, 1.0)


def iou_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """tp / (tp + fp + fn); 1.0 where truth and prediction are both empty."""
    return _ratio(tp, tp + fp + fn, 1.0)


def class_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dice, IoU, precision and recall per class (last dim); NaN for a class absent from both
    truth and prediction, 0 for any other 0/0 (see the module docstring)."""
    absent = (tp + fp + fn) == 0
    nan = float("nan")
    scores = {
        "dice": dice_score(tp, fp, fn),
        "iou": iou_score(tp, fp, fn),
        "precision": _ratio(tp, tp + fp, 0.0),
        "recall": _ratio(tp, tp + fn, 0.0),
    }
    return {name: torch.where(absent, nan, value) for name, value in scores.items()}


class SegmentationMetrics:
    """Accumulates counts over a whole dataset; :meth:`compute` reduces them once.

    Args:
        num_classes: classes including background (class 0).
        include_background: average class 0 into the means too.
    """

    def __init__(self, num_classes: int, *, include_background: bool = False) -> None:
        self.num_classes = num_classes
        self.first = 0 if include_background else 1  # the averaged classes are first..C-1
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.image_counts: list[np.ndarray] = []  # (C, 3): tp, fp, fn of each class, per image

    def _per_image(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image Dice and IoU from (N, C, 3) counts summed over the averaged classes."""
        tp, fp, fn = (counts[:, self.first :, k].sum(-1) for k in range(3))
        return dice_score(tp, fp, fn), iou_score(tp, fp, fn)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[list[float], list[float]]:
        """Add a batch of label maps (B, H, W). Returns the batch's per-image Dice and IoU."""
        confusion = confusion_matrix(pred, target, self.num_classes).cpu()
        self.confusion += confusion.sum(dim=0)
        tp, fp, fn, _ = stat_scores(confusion)
        counts = torch.stack([tp, fp, fn], dim=-1)
        self.image_counts += list(counts.numpy())
        dice, iou = self._per_image(counts)
        return dice.tolist(), iou.tolist()

    def merge_processes(self) -> None:
        """Under torch.distributed: sum the confusion matrices of all ranks and gather their
        per-image counts, so :meth:`compute` gives what one process would over all images."""
        from segpipe.distributed import gather_lists, sum_over_ranks

        self.confusion = sum_over_ranks(self.confusion)
        self.image_counts = gather_lists(self.image_counts)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """The reductions of the module docstring; with ``class_names``, also the per-class
        scores as flat keys such as ``iou/road``."""
        tp, fp, fn, _ = stat_scores(self.confusion)
        per_class = class_scores(tp, fp, fn)
        averaged = slice(self.first, None)
        # nanmean: classes with no score (NaN) are left out of the means
        out = {name: per_class[name][averaged].nanmean().item() for name in SCORES}
        micro = class_scores(*(x[averaged].sum() for x in (tp, fp, fn)))
        out["dice_micro"], out["iou_micro"] = micro["dice"].item(), micro["iou"].item()
        total = self.confusion.sum().item()
        out["pixel_accuracy"] = self.confusion.trace().item() / total if total else float("nan")
        if self.image_counts:
            dice, iou = self._per_image(torch.from_numpy(np.stack(self.image_counts)))
            out["dice_per_image"], out["iou_per_image"] = dice.mean().item(), iou.mean().item()
        else:
            out["dice_per_image"] = out["iou_per_image"] = float("nan")
        for c, class_name in enumerate(class_names or ()):
            for name in SCORES:
                out[f"{name}/{class_name}"] = per_class[name][c].item()
        return out

    def bootstrap_interval(
        self, resamples: int = 1000, seed: int = 0, level: float = 0.95
    ) -> dict[str, float]:
        """Percentile bootstrap interval of the dataset-level mean Dice and IoU over images.

        Images are drawn with replacement ``resamples`` times; each draw's counts are summed and
        reduced exactly like :meth:`compute`. Seeded, so the interval is reproducible.
        """
        (draws_by_name,) = bootstrap_scores(
            [np.stack(self.image_counts)], self.first, resamples=resamples, seed=seed
        )
        return percentile_interval(draws_by_name, level)


def bootstrap_scores(
    image_counts: list[np.ndarray],
    first: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Dataset-level mean Dice and IoU of bootstrap resamples of the images, the same resamples
    for every model scored on the same images (a paired bootstrap).

    Args:
        image_counts: per model, its (N, C, 3) tp, fp, fn of each class on each image, the
            images in the same order for every model.
        first: the first class averaged (0 with background, else 1).
        class_names: with them, also each class's Dice (``dice/<name>``; NaN in a draw where
            the class is absent from truth and prediction).

    Returns:
        Per model, ``{"dice": (resamples,), "iou": (resamples,)}``: each draw's counts summed
        and reduced exactly like :meth:`SegmentationMetrics.compute`.
    """
    stacked = [np.asarray(c).astype(np.int64) for c in image_counts]
    n = len(stacked[0])
    rng = np.random.default_rng(seed)
    names = ["dice", "iou", *(f"dice/{c}" for c in class_names or ())]
    draws: list[dict[str, list[float]]] = [{name: [] for name in names} for _ in stacked]
    for start in range(0, resamples, 100):  # chunks bound memory for large test sets
        size = min(100, resamples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size)  # (R, N)
        for counts, by_name in zip(stacked, draws, strict=True):
            sums = np.einsum("rn,nck->rck", weights, counts)
            for name, values in dataset_scores(sums, first, class_names).items():
                by_name[name] += values.tolist()
    return [{name: np.array(v) for name, v in by_name.items()} for by_name in draws]


def dataset_scores(
    sums: np.ndarray, first: int, class_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Mean Dice and IoU over the averaged classes (and ``dice/<name>`` per class with
    ``class_names``) from counts already summed over images, as
    :meth:`SegmentationMetrics.compute` reduces them.

    Shape:
        sums: (..., C, 3) tp, fp, fn per class.
        returns: arrays of shape (...).
    """
    sums = torch.from_numpy(np.asarray(sums, dtype=np.int64))
    scores = class_scores(sums[..., 0], sums[..., 1], sums[..., 2])
    out = {name: scores[name][..., first:].nanmean(dim=-1).numpy() for name in ("dice", "iou")}
    for c, class_name in enumerate(class_names or ()):
        out[f"dice/{class_name}"] = scores["dice"][..., c].numpy()
    return out


COUNTS = ("tp", "fp", "fn")


def count_columns(class_names: Sequence[str]) -> list[str]:
    """The per-image table's count columns: ``tp/<class>``, ``fp/<class>``, ``fn/<class>`` for
    every class, background included (the pixels of one image, ignored ones left out)."""
    return [f"{kind}/{name}" for name in class_names for kind in COUNTS]


def counts_row(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """One image's (C, 3) tp, fp, fn counts as the columns of :func:`count_columns`."""
    values = np.asarray(counts).reshape(-1)
    return dict(zip(count_columns(class_names), (int(v) for v in values), strict=True))


def counts_of_table(table: Any, class_names: Sequence[str]) -> np.ndarray:
    """The (N, C, 3) counts back from a per-image table (a DataFrame with the columns of
    :func:`count_columns`), in its row order."""
    columns = count_columns(class_names)
    values = table[columns].to_numpy(dtype=np.int64)
    return values.reshape(len(table), len(class_names), len(COUNTS))


def defined_mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN (infinities count); NaN if there are none."""
    defined = np.asarray(values, dtype=np.float64)
    defined = defined[~np.isnan(defined)]
    return float(defined.mean()) if len(defined) else float("nan")


def percentile_interval(draws_by_name: dict[str, np.ndarray], level: float = 0.95) -> dict:
    """``{name}_ci95_low`` / ``_high`` (for ``level`` 0.95): percentiles of bootstrap draws."""
    tail = (1 - level) / 2 * 100
    pct = int(round(level * 100))
    out = {}
    for name, values in draws_by_name.items():
        low, high = np.percentile(values, [tail, 100 - tail])
        out[f"{name}_ci{pct}_low"], out[f"{name}_ci{pct}_high"] = float(low), float(high)
    return out


class ThresholdSweep:
    """Foreground-vs-background counts at every threshold in 0.01..0.99, from probabilities.

    Each pixel's foreground probability is bucketed once, so the counts at every threshold are
    exact for the rule ``probability > threshold`` that prediction uses.
    """

    THRESHOLDS = tuple(round(0.01 * k, 2) for k in range(1, 100))

    def __init__(self) -> None:
        self._edges = torch.tensor(self.THRESHOLDS, dtype=torch.float32)
        size = len(self.THRESHOLDS) + 1
        self.positive = torch.zeros(size, dtype=torch.int64)  # by number of thresholds below p
        self.negative = torch.zeros(size, dtype=torch.int64)

    def update(self, probability: torch.Tensor, target: torch.Tensor) -> None:
        """Add one image: foreground probability (H, W) float32 and class indices (H, W)."""
        valid = target != IGNORE
        # bucketize: the number of thresholds strictly below p, so p > t_k  <=>  bucket > k.
        bucket = torch.bucketize(probability[valid].float(), self._edges, right=False)
        truth = target[valid] > 0
        size = len(self.positive)
        self.positive += torch.bincount(bucket[truth], minlength=size)
        self.negative += torch.bincount(bucket[~truth], minlength=size)

    def curve(self) -> list[dict[str, float]]:
        """Rows of threshold, precision, recall, dice and iou. Precision is 1.0 where nothing
        is predicted (the usual end point of a precision-recall curve)."""
        # predicted positive at threshold k: bucket >= k + 1 (a suffix sum)
        tp = self.positive.flip(0).cumsum(0).flip(0)[1:]
        fp = self.negative.flip(0).cumsum(0).flip(0)[1:]
        fn = self.positive.sum() - tp
        precision = _ratio(tp, tp + fp, 1.0)
        recall = _ratio(tp, tp + fn, 0.0)
        dice, iou = dice_score(tp, fp, fn), iou_score(tp, fp, fn)
        return [
            {
                "threshold": t,
                "precision": precision[k].item(),
                "recall": recall[k].item(),
                "dice": dice[k].item(),
                "iou": iou[k].item(),
            }
            for k, t in enumerate(self.THRESHOLDS)
        ]

    def best(self) -> dict[str, float]:
        """The threshold with the highest Dice (the lowest such threshold on ties)."""
        rows = self.curve()
        top = max(rows, key=lambda r: (r["dice"], -r["threshold"]))
        return {"threshold": top["threshold"], "dice": top["dice"]}
