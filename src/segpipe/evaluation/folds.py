"""A cross-validation's summary, as nnU-Net's: each fold's validation Dice and its test scores
on the one test set every fold keeps, with their mean and standard deviation over the folds.

The folds of one run are runs whose params differ only in ``split.fold`` (``dvc exp run
--queue -S split.fold=0,1,2,3,4``, see docs/data.md), one per fold ``0..split.folds - 1``.
``segpipe compare --folds`` reads them (docs/compare.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from segpipe.errors import SegpipeError
from segpipe.evaluation.compare import Revision, Run
from segpipe.metrics import dataset_scores

FOLD, FOLDS = "split.fold", "split.folds"
VAL = "val_dice"
"""The validation score of a fold: ``best.val_dice`` of ``metrics/train/metrics.json`` (the
Dice of the best epoch on that fold's validation split)."""


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold: its number, the run that trained it, and its scores (``val_dice``, then the
    test metrics: dice, iou and, multi-class, each class's Dice); None: not recorded."""

    fold: int
    name: str
    scores: dict[str, float | None]


@dataclasses.dataclass(frozen=True)
class FoldSummary:
    """Every fold in order, and each score's mean and sd (n - 1) over the folds (None where a
    fold lacks the score)."""

    folds: list[Fold]
    mean: dict[str, float | None]
    sd: dict[str, float | None]


def fold_order(runs: Sequence[Run | Revision]) -> list[int]:
    """The indices of ``runs`` (read revisions or runs: their names and params) by fold, 0 to
    k - 1.

    Raises:
        SegpipeError: in one line, for runs that are not the k folds of one run: no
            ``split.folds``, another k, another param besides ``split.fold``, a fold twice or
            missing.
    """
    first = runs[0]
    for run in runs:
        if run.params.get(FOLDS) is None:
            raise SegpipeError(
                f"{run.name}: {FOLDS} is null, so it is no fold of a cross-validation (set "
                f"{FOLDS} and queue -S {FOLD}=0,1,...)"
            )
    k = first.params[FOLDS]
    by_fold: dict[int, str] = {}
    order = []
    for i, run in enumerate(runs):
        if run.params[FOLDS] != k:
            raise SegpipeError(
                f"{run.name} has {FOLDS} {run.params[FOLDS]}, {first.name} {k}: not folds of "
                "one run"
            )
        _require_same_params(first, run)
        fold = run.params[FOLD]
        if fold in by_fold:
            raise SegpipeError(
                f"{by_fold[fold]} and {run.name} are both {FOLD} {fold}: give one run per fold"
            )
        by_fold[fold] = run.name
        order.append((fold, i))
    missing = [str(f) for f in range(k) if f not in by_fold]
    if missing:
        raise SegpipeError(
            f"fold {', '.join(missing)} of the {k} folds (0..{k - 1}) missing from the runs "
            f"given (folds {', '.join(str(f) for f in sorted(by_fold))}): give one run per fold"
        )
    return [i for _, i in sorted(order)]


def _require_same_params(first: Run | Revision, run: Run | Revision) -> None:
    """Folds of one run differ in ``split.fold`` alone (the training ``seed`` included)."""
    keys = sorted((set(first.params) | set(run.params)) - {FOLD})
    for key in keys:
        a, b = first.params.get(key), run.params.get(key)
        if repr(a) != repr(b):
            raise SegpipeError(
                f"{run.name} has {key} {b!r}, {first.name} {a!r}: folds of one run differ in "
                f"{FOLD} alone"
            )


def summarize(
    runs: Sequence[Run],
    val_dice: Sequence[float | None],
    first: int,
    class_names: Sequence[str] | None = None,
) -> FoldSummary:
    """Each fold's scores, in fold order, with their mean and sd over the folds.

    Args:
        runs: the folds (checked by :func:`fold_order`), with their test-set counts.
        val_dice: each run's validation Dice (None: not recorded).
        first: the first class averaged (0 with background, else 1).
        class_names: with them, each class's test Dice too (multi-class).
    """
    folds = []
    for i in fold_order(runs):
        test = dataset_scores(runs[i].counts.sum(axis=0), first, class_names)
        scores = {VAL: val_dice[i], **{k: _plain(v) for k, v in test.items()}}
        folds.append(Fold(int(runs[i].params[FOLD]), runs[i].name, scores))
    mean: dict[str, float | None] = {}
    sd: dict[str, float | None] = {}
    for metric in folds[0].scores:
        values = [f.scores[metric] for f in folds]
        missing = any(v is None for v in values)
        mean[metric] = None if missing else float(np.mean(values))
        sd[metric] = None if missing else float(np.std(values, ddof=1))
    return FoldSummary(folds, mean, sd)


def _plain(value: np.ndarray) -> float | None:
    """A score as a float; None for NaN (a class absent from truth and prediction)."""
    number = float(value)
    return None if np.isnan(number) else number
