"""Connected-component post-processing that proves itself (``evaluate.postprocess: auto``).

As nnU-Net does: per foreground class, each candidate rule is tried on the validation split's
predictions, and the rule with the best validation Dice of that class is kept only if it beats
no post-processing. The candidates: keep only the largest component, or remove the components
smaller than 0.05%, 0.2% or 1% of the image's pixels. Components are 8-connected; removed
pixels become background. A class's Dice depends only on its own pixels, so the choice of one
class never changes another's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from segpipe.constants import IGNORE
from segpipe.metrics import SegmentationMetrics, defined_mean, dice_score

log = logging.getLogger(__name__)

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Which components of a class to keep: ``min_fraction`` > 0 removes those smaller than
    that share of the image's pixels; ``largest`` keeps the largest alone (ties: the first in
    raster order); neither keeps all."""

    largest: bool = False
    min_fraction: float = 0.0

    def describe(self) -> str:
        """``none``, ``largest`` or ``min_0.2%``: the rule's name in evaluate.json."""
        if self.largest:
            return "largest"
        return f"min_{self.min_fraction * 100:g}%" if self.min_fraction > 0 else "none"

    def keep(self, sizes: np.ndarray, n_pixels: int) -> np.ndarray:
        """Which components of sizes (K,) (component k + 1 of ``ndimage.label``) it keeps."""
        if self.largest:
            return np.arange(len(sizes)) == np.argmax(sizes)
        return sizes >= self.min_fraction * n_pixels


NO_RULE = Rule()
CANDIDATES = (
    Rule(min_fraction=0.0005),
    Rule(min_fraction=0.002),
    Rule(min_fraction=0.01),
    Rule(largest=True),
)
"""Tried in this order; on a tie in validation Dice the earlier (gentler) one wins."""


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8-connected components of a boolean mask (H, W): their label map (0: none, k:
    component k) and their sizes (K,)."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)[1:]


def apply(pred: np.ndarray, rules: dict[int, Rule]) -> np.ndarray:
    """``pred`` (H, W) class indices with each class's ``rules`` applied (a copy; removed
    pixels become background)."""
    out = pred.copy()
    for c, rule in rules.items():
        if rule == NO_RULE:
            continue
        labels, sizes = components(pred == c)
        if len(sizes):
            kept = np.concatenate([[True], rule.keep(sizes, pred.size)])
            out[~kept[labels]] = 0
    return out


class PostprocessSearch:
    """Each foreground class's tp, fp, fn over validation images, with no rule and with each
    candidate, accumulated image by image; :meth:`choose` picks the rules.

    Args:
        num_classes: classes including background (class 0).
        candidates: the rules to try.
    """

    def __init__(self, num_classes: int, candidates: Sequence[Rule] = CANDIDATES) -> None:
        self.candidates = [NO_RULE, *candidates]
        # (rule, foreground class, tp/fp/fn); rule 0 is no post-processing.
        self.counts = np.zeros((len(self.candidates), num_classes - 1, 3), dtype=np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add one image's predicted and true label maps (H, W)."""
        valid = truth != IGNORE
        for c in range(1, self.counts.shape[1] + 1):
            labels, sizes = components(pred == c)
            hit = (truth == c) & valid
            tp_k = np.bincount(labels[hit], minlength=len(sizes) + 1)[1:]
            fp_k = np.bincount(labels[valid & ~hit], minlength=len(sizes) + 1)[1:]
            fn = int(np.count_nonzero(hit)) - int(tp_k.sum())
            for r, rule in enumerate(self.candidates):
                kept = rule.keep(sizes, pred.size) if len(sizes) else np.zeros(0, dtype=bool)
                lost = int(tp_k[~kept].sum())
                self.counts[r, c - 1] += (tp_k[kept].sum(), fp_k[kept].sum(), fn + lost)

    def dice(self) -> np.ndarray:
        """(rules, foreground classes) validation Dice; NaN for a class nowhere to be seen."""
        counts = torch.from_numpy(self.counts)
        dice = dice_score(counts[..., 0], counts[..., 1], counts[..., 2]).numpy()
        return np.where(self.counts.sum(-1) == 0, np.nan, dice)

    def choose(self, *, include_background: bool) -> Postprocess:
        """The rules of :meth:`rules_chosen`, ready to apply to the test split (whose scores average
        the classes as ``include_background`` says)."""
        rules = self.rules_chosen()
        validation = self.summary(rules)
        names = {c: rule.describe() for c, rule in rules.items()}
        log.info("post-processing rules by class %s; validation Dice %s", names, validation)
        return Postprocess(
            rules,
            len(self.counts[0]) + 1,
            include_background=include_background,
            validation=validation,
        )

    def rules_chosen(self) -> dict[int, Rule]:
        """Per foreground class, the candidate with the best validation Dice if it beats no
        rule (strictly), else :data:`NO_RULE`."""
        dice = self.dice()
        chosen = {}
        for c in range(dice.shape[1]):
            best = int(np.argmax(np.nan_to_num(dice[:, c], nan=-1.0)))  # first of the best
            chosen[c + 1] = self.candidates[best] if dice[best, c] > dice[0, c] else NO_RULE
        return chosen

    def summary(self, rules: dict[int, Rule]) -> dict[str, float]:
        """Mean validation Dice over the foreground classes without and with ``rules``."""
        dice = self.dice()
        index = {rule: r for r, rule in enumerate(self.candidates)}
        with_rules = [dice[index[rules[c + 1]], c] for c in range(dice.shape[1])]
        return {
            "val_dice_without_postprocess": defined_mean(dice[0]),
            "val_dice_with_postprocess": defined_mean(np.array(with_rules)),
        }


class Postprocess:
    """The chosen rules applied to the test predictions, which are also scored without them.

    Args:
        rules: per foreground class index, its rule.
        num_classes, include_background: as :class:`~segpipe.metrics.SegmentationMetrics`.
        validation: the validation scores that chose them (:meth:`PostprocessSearch.summary`).
    """

    def __init__(
        self,
        rules: dict[int, Rule],
        num_classes: int,
        *,
        include_background: bool,
        validation: dict[str, float],
    ) -> None:
        self.rules = rules
        self.validation = validation
        self.without = SegmentationMetrics(num_classes, include_background=include_background)

    def __call__(self, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Count ``pred`` (H, W) unprocessed against ``truth``; return it post-processed."""
        self.without.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
        return apply(pred, self.rules)

    def summary(self, class_names: Sequence[str]) -> dict[str, float | str]:
        """Each class's rule (``postprocess/<class>``), the validation scores that chose them
        and the test scores without them."""
        scores = self.without.compute()
        out: dict[str, float | str] = {
            f"postprocess/{class_names[c]}": rule.describe() for c, rule in self.rules.items()
        }
        out.update(self.validation)
        for name in ("dice", "iou", "dice_per_image"):
            out[f"{name}_without_postprocess"] = scores[name]
        return out
