"""Connected-component post-processing on tiny hand-made masks: a rule is kept only when it
raises validation Dice, its counts are those of the post-processed masks, and the test split
is scored with and without it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segpipe.constants import IGNORE
from segpipe.evaluation.postprocess import (
    NO_RULE,
    PostprocessSearch,
    Rule,
    apply,
    components,
)
from segpipe.metrics import SegmentationMetrics

LARGEST = Rule(largest=True)


def blob_and_speckle() -> tuple[np.ndarray, np.ndarray]:
    """A 40x40 image (1600 px): truth a 10x10 square; prediction the square and a 2-pixel
    speckle (0.125% of the image) far from it."""
    truth = np.zeros((40, 40), dtype=np.uint8)
    truth[5:15, 5:15] = 1
    pred = truth.copy()
    pred[30, 30:32] = 1
    return pred, truth


def dice_of(pred: np.ndarray, truth: np.ndarray) -> float:
    m = SegmentationMetrics(int(max(pred.max(), truth[truth != IGNORE].max())) + 1)
    m.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    return m.compute()["dice"]


def test_components_are_8_connected():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True  # a diagonal pair and a single pixel
    _, sizes = components(mask)
    assert sizes.tolist() == [2, 1]


def test_rules_remove_small_components_or_all_but_the_largest():
    pred, _ = blob_and_speckle()
    assert (apply(pred, {1: NO_RULE}) == pred).all()
    cleaned = apply(pred, {1: Rule(min_fraction=0.002)})  # 3.2 px: the speckle goes
    assert cleaned[30, 30:32].tolist() == [0, 0] and cleaned.sum() == 100
    assert (apply(pred, {1: LARGEST}) == cleaned).all()
    assert (apply(pred, {1: Rule(min_fraction=0.0005)}) == pred).all()  # 0.8 px: all stay
    assert pred[30, 30] == 1  # the input is left alone


def test_removing_a_speckle_raises_dice_and_is_kept():
    pred, truth = blob_and_speckle()
    search = PostprocessSearch(2)
    search.update(pred, truth)
    dice = search.dice()[:, 0]
    assert dice[0] == pytest.approx(dice_of(pred, truth)) == pytest.approx(200 / 202)
    # each candidate's counts are those of the masks it leaves
    for r, rule in enumerate(search.candidates):
        assert dice[r] == pytest.approx(dice_of(apply(pred, {1: rule}), truth))
    assert search.rules_chosen() == {1: Rule(min_fraction=0.002)}  # the gentlest of the best
    chosen = search.choose(include_background=False)
    assert chosen.validation["val_dice_with_postprocess"] == 1.0
    assert chosen.validation["val_dice_without_postprocess"] == pytest.approx(200 / 202)


def test_a_rule_that_would_hurt_is_not_kept():
    # truth and prediction: a big square and a small true object; removing it loses Dice
    _, truth = blob_and_speckle()
    truth[30, 30:32] = 1
    search = PostprocessSearch(2)
    search.update(truth.copy(), truth)
    assert search.rules_chosen() == {1: NO_RULE}
    assert search.dice()[0, 0] == 1.0 and search.dice()[-1, 0] < 1.0


def test_a_tie_keeps_no_rule():
    # one component only: every rule that keeps it ties with doing nothing
    _, truth = blob_and_speckle()
    search = PostprocessSearch(2)
    search.update(truth.copy(), truth)
    assert search.rules_chosen() == {1: NO_RULE}


def test_each_class_gets_its_own_rule_and_ignored_pixels_count_nowhere():
    pred, truth = blob_and_speckle()
    truth[20:24, 20:24] = 2
    pred[20:24, 20:24] = 2
    pred[0, 39] = 2  # a class-2 speckle on an ignored pixel: it changes no count
    truth[0, 39] = IGNORE
    search = PostprocessSearch(3)
    search.update(pred, truth)
    assert search.rules_chosen() == {1: Rule(min_fraction=0.002), 2: NO_RULE}
    assert search.dice()[0, 1] == 1.0


def test_a_class_absent_from_the_validation_split_gets_no_rule():
    search = PostprocessSearch(3)
    pred, truth = blob_and_speckle()
    search.update(pred, truth)
    assert math.isnan(search.dice()[0, 1])
    assert search.rules_chosen()[2] == NO_RULE


def test_the_test_split_is_scored_with_and_without():
    pred, truth = blob_and_speckle()
    search = PostprocessSearch(2)
    search.update(pred, truth)
    cleanup = search.choose(include_background=False)
    cleaned = cleanup(pred, truth)
    assert dice_of(cleaned, truth) == 1.0
    summary = cleanup.summary(["background", "polyp"])
    assert summary["postprocess/polyp"] == "min_0.2%"
    assert summary["dice_without_postprocess"] == pytest.approx(200 / 202)
    assert summary["val_dice_with_postprocess"] == 1.0


def test_rule_names():
    assert [r.describe() for r in (NO_RULE, LARGEST, Rule(min_fraction=0.0005))] == [
        "none",
        "largest",
        "min_0.05%",
    ]
