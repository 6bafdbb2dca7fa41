"""Is one run better than another? Paired bootstrap intervals, Holm-corrected verdicts and the
spread between seeds, from the per-image counts that the evaluate stage writes.

Method (``segpipe compare``, see docs/compare.md):
- Runs are scored on the same test images. A bootstrap draw resamples the images with
  replacement, the same draw for every run (paired), and recomputes each run's dataset-level
  Dice and IoU from the counts summed over the drawn images, exactly as the evaluate stage does.
- Runs whose params differ only in their seeds form a group. A group's score is the mean of its
  members' scores; in each draw the members are also resampled with replacement, so the interval
  of a difference between groups covers both which test images were drawn and which seeds were
  trained (with one run per group: the test images alone).
- The interval is the 2.5th-97.5th percentile of the draws' differences (other minus
  baseline). Its two-sided p-value is ``2 * min(share of draws <= 0, share >= 0)`` (with the
  usual +1 in numerator and denominator); Holm's step-down correction adjusts the p-values over
  the groups compared with the baseline, separately for each metric. A verdict is ``better`` or
  ``worse`` when the adjusted p-value is below 0.05, else ``no clear difference``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from segpipe.metrics import bootstrap_scores, dataset_scores

LEVEL = 0.95
"""The confidence level of the intervals, and 1 - the significance level of the verdicts."""

SEED_KEYS = ("seed",)
"""Params that only seed a run: runs that differ in nothing else are one group."""

BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"


@dataclasses.dataclass(frozen=True)
class Run:
    """One evaluated run, as compare reads it.

    Args:
        name: as the user named it (a revision, tag, experiment name or ``workspace``).
        counts: (N, C, 3) tp, fp, fn of each class on each test image, the images in the same
            order for every run.
        params: its params.yaml as flat ``section.key`` values.
    """

    name: str
    counts: np.ndarray
    params: Mapping[str, object]


@dataclasses.dataclass(frozen=True)
class Revision:
    """One argument of ``segpipe compare`` read at its revision (a git revision, tag, DVC
    experiment or the workspace): its params, per-image table, test-set fingerprint and the
    environment that trained it."""

    name: str
    rev: str | None  # the commit; None: the workspace
    params: dict[str, Any]  # flat section.key values
    table: pd.DataFrame  # metrics/per_image.csv
    test_set: dict
    environment: dict | None = None  # metrics/environment.json's "train"; None: not recorded

    @property
    def classes(self) -> list[str]:
        return list(self.params["data.classes"])

    @property
    def first(self) -> int:
        return 0 if self.params["evaluate.include_background"] else 1


def environment_note(revisions: Sequence[Revision]) -> str:
    """Whether every run was trained in the same environment (docs/experiments.md,
    Reproducibility): then a rerun is bit-identical and a seed group's spread is training noise
    alone; otherwise a difference also holds rounding from another CPU, library or precision."""
    known = [r for r in revisions if r.environment is not None]
    if not known:
        return "training environment: not recorded (runs evaluated before segpipe recorded it)"
    base = known[0].environment or {}
    differing = sorted(
        {k for r in known for k, v in (r.environment or {}).items() if base.get(k) != v}
    )
    unknown = [r.name for r in revisions if r.environment is None]
    tail = f"; not recorded for {', '.join(unknown)}" if unknown else ""
    if not differing:
        return (
            f"training environment: the same in every run ({base.get('cpu')}, torch "
            f"{base.get('torch')}, {base.get('threads')} threads, {base.get('precision')}){tail}"
        )
    return (
        f"training environment differs in {', '.join(differing)}: differences also hold "
        f"rounding from another machine or library (expect them within the seed spread){tail}"
    )


@dataclasses.dataclass(frozen=True)
class Spread:
    """A metric over a group's members: their mean, lowest, highest and standard deviation
    (n - 1 in the denominator; None for one member)."""

    mean: float
    min: float
    max: float
    sd: float | None


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs that differ only in their seeds (or one run), with each metric's spread."""

    name: str
    members: list[str]
    seeds: list[dict[str, object]]
    scores: dict[str, Spread]


@dataclasses.dataclass(frozen=True)
class Difference:
    """One metric of one group against the baseline group."""

    metric: str
    baseline: float
    other: float
    difference: float
    low: float
    high: float
    p: float
    p_holm: float
    verdict: str


@dataclasses.dataclass(frozen=True)
class Comparison:
    baseline: str
    other: str
    metrics: list[Difference]


def group_runs(runs: Sequence[Run], *, by_seed: bool = True) -> list[list[int]]:
    """Run indices by group, in order of first appearance: runs whose params are equal but for
    :data:`SEED_KEYS`, with seeds that all differ, are one group. Runs that are equal, seeds
    included, stay apart (a code change does not show in params), and so do all runs when they
    would make a single group (then the runs themselves are compared)."""
    if not by_seed:
        return [[i] for i in range(len(runs))]
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        rest = tuple(sorted((k, repr(v)) for k, v in run.params.items() if k not in SEED_KEYS))
        seed = _seeds(run)
        key = (rest, 0)
        while key in groups and seed in (_seeds(runs[j]) for j in groups[key]):
            key = (rest, key[1] + 1)  # the same seed again: a group of its own
        groups.setdefault(key, []).append(i)
    grouped = list(groups.values())
    return grouped if len(grouped) > 1 else [[i] for i in range(len(runs))]


def _seeds(run: Run) -> dict[str, object]:
    return {k: run.params.get(k) for k in SEED_KEYS if k in run.params}


def compare(
    runs: Sequence[Run],
    first: int,
    class_names: Sequence[str] | None = None,
    *,
    by_seed: bool = True,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[list[Group], list[Comparison]]:
    """Every group against the first one (the group of ``runs[0]``), as the module docstring
    says.

    Args:
        first: the first class averaged (0 with background, else 1).
        class_names: with them, each class's Dice is compared too (multi-class).

    Returns:
        The groups, then one comparison per group after the first.
    """
    grouped = group_runs(runs, by_seed=by_seed)
    counts = [run.counts for run in runs]
    member_draws = bootstrap_scores(
        counts, first, resamples=resamples, seed=seed, class_names=class_names
    )
    observed = [dataset_scores(c.sum(axis=0), first, class_names) for c in counts]
    metrics = list(member_draws[0])
    rng = np.random.default_rng([seed, 1])  # the seed resampling's own stream
    groups, draws = [], []
    for members in grouped:
        draws.append(_group_draws([member_draws[i] for i in members], rng))
        groups.append(_group(runs, members, [observed[i] for i in members], metrics))
    others = list(zip(groups[1:], draws[1:], strict=True))
    by_metric = {
        m: holm([_difference(m, groups[0], g, draws[0], d) for g, d in others]) for m in metrics
    }
    comparisons = [
        Comparison(groups[0].name, group.name, [by_metric[m][j] for m in metrics])
        for j, (group, _) in enumerate(others)
    ]
    return groups, comparisons


def _group_draws(members: list[dict[str, np.ndarray]], rng: np.random.Generator) -> dict:
    """A group's draws: the mean over its members resampled with replacement in each draw."""
    k, resamples = len(members), len(next(iter(members[0].values())))
    picks = rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), int)
    out = {}
    for metric in members[0]:
        stacked = np.stack([m[metric] for m in members], axis=1)  # (R, k)
        with np.errstate(invalid="ignore"):
            out[metric] = np.take_along_axis(stacked, picks, axis=1).mean(axis=1)
    return out


def _group(
    runs: Sequence[Run], members: list[int], observed: list[dict], metrics: list[str]
) -> Group:
    names = [runs[i].name for i in members]
    scores = {}
    for metric in metrics:
        values = np.array([float(o[metric]) for o in observed])
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
        scores[metric] = Spread(float(values.mean()), float(values.min()), float(values.max()), sd)
    return Group("+".join(names), names, [_seeds(runs[i]) for i in members], scores)


def _difference(
    metric: str, baseline: Group, other: Group, base_draws: dict, other_draws: dict
) -> Difference:
    """The observed difference of the group means, its percentile interval and p-value (the
    Holm-adjusted p-value and the verdict are filled in by :func:`holm`)."""
    diffs = other_draws[metric] - base_draws[metric]
    diffs = diffs[~np.isnan(diffs)]  # draws where a class is absent from truth and prediction
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail]) if len(diffs) else (np.nan, np.nan)
    p = 2 * min(np.sum(diffs <= 0) + 1, np.sum(diffs >= 0) + 1) / (len(diffs) + 1)
    a, b = baseline.scores[metric].mean, other.scores[metric].mean
    return Difference(metric, a, b, b - a, float(low), float(high), min(1.0, p), 1.0, UNCLEAR)


def holm(differences: list[Difference], alpha: float = 1 - LEVEL) -> list[Difference]:
    """Holm's step-down adjustment of the p-values of several comparisons, in their order,
    with the verdict each adjusted p-value gives at ``alpha``."""
    m = len(differences)
    order = sorted(range(m), key=lambda i: differences[i].p)
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * differences[i].p))
        adjusted[i] = running
    return [
        dataclasses.replace(d, p_holm=p, verdict=verdict(d.difference, p, alpha))
        for d, p in zip(differences, adjusted, strict=True)
    ]


def verdict(difference: float, p: float, alpha: float = 1 - LEVEL) -> str:
    """``better`` or ``worse`` (by the sign of the difference) when ``p`` < ``alpha``."""
    if p >= alpha or difference == 0 or np.isnan(difference):
        return UNCLEAR
    return BETTER if difference > 0 else WORSE
