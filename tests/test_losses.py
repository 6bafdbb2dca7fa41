"""Losses by name and weighted sums: direction, ignored pixels, class weights, errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from segpipe import check
from segpipe.constants import IGNORE
from segpipe.errors import SegpipeError
from segpipe.training.losses import build_loss, parse_loss

from .helpers import write_params

BINARY = ["ce", "bce", "dice", "focal", "lovasz", "ce+dice", "0.5*bce + 2*dice"]
MULTI = ["ce", "dice", "focal", "lovasz", "ce+dice", "ce+0.5*lovasz"]


def labels_and_logits(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (2, 8, 8) with every class, and logits that predict them confidently."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (2, 8, 8), generator=g)
    if num_classes == 2:
        return labels, (labels.float() * 20 - 10).unsqueeze(1)
    return labels, F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 20 - 10


@pytest.mark.parametrize(
    ("name", "num_classes"), [(n, 2) for n in BINARY] + [(n, 4) for n in MULTI]
)
def test_losses_are_lower_for_the_right_answer(name, num_classes):
    loss = build_loss(name, num_classes)
    labels, good = labels_and_logits(num_classes)
    value = loss(good, labels)
    assert value.ndim == 0 and torch.isfinite(value)
    assert value < loss(-good, labels)


@pytest.mark.parametrize(
    ("name", "num_classes"), [(n, 2) for n in BINARY] + [(n, 4) for n in MULTI]
)
def test_ignored_pixels_do_not_change_any_loss(name, num_classes):
    loss = build_loss(name, num_classes)
    labels, logits = labels_and_logits(num_classes, seed=1)
    logits = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    labels[:, :3] = IGNORE
    changed = logits.clone()
    changed[:, :, :3] = torch.randn(changed[:, :, :3].shape) * 50  # only ignored pixels differ
    assert loss(logits, labels) == pytest.approx(loss(changed, labels).item(), rel=1e-5)


def test_bce_is_the_tutorials_bce_with_logits_and_binary_ce_is_bce():
    logits = torch.randn(2, 1, 8, 8)
    labels = (torch.rand(2, 8, 8) > 0.5).long()
    expected = torch.nn.BCEWithLogitsLoss()(logits, labels.unsqueeze(1).float())
    assert build_loss("bce", 2)(logits, labels) == pytest.approx(expected.item())
    assert build_loss("ce", 2)(logits, labels) == pytest.approx(expected.item())


def test_multiclass_ce_with_class_weights_is_torch_cross_entropy():
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, 0] = IGNORE
    weights = [0.2, 1.0, 3.0]
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(weights), ignore_index=IGNORE)
    assert build_loss("ce", 3, weights)(logits, labels) == pytest.approx(expected.item())


def test_binary_class_weights_weight_the_pixels():
    logits = torch.randn(1, 1, 4, 4)
    labels = (torch.rand(1, 4, 4) > 0.5).long()
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")
    w = torch.where(labels == 1, 4.0, 1.0)
    expected = (per_pixel * w).sum() / w.sum()
    assert build_loss("bce", 2, [1.0, 4.0])(logits, labels) == pytest.approx(expected.item())


def test_weighted_sum_is_the_sum_of_its_weighted_terms():
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    ce, dice = build_loss("ce", 3)(logits, labels), build_loss("dice", 3)(logits, labels)
    total = build_loss("0.5*ce + 2*dice", 3)(logits, labels)
    assert total == pytest.approx((0.5 * ce + 2 * dice).item())


def test_parse_loss():
    assert parse_loss("ce+dice") == ((1.0, "ce"), (1.0, "dice"))
    assert parse_loss(" 0.25 * focal + lovasz ") == ((0.25, "focal"), (1.0, "lovasz"))


@pytest.mark.parametrize(
    ("spec", "num_classes", "message"),
    [
        ("mse", 2, r"train.loss: unknown loss 'mse' in 'mse' \(valid: ce, bce, dice, focal"),
        ("ce+", 2, r"train.loss: unknown loss '' in 'ce\+'"),
        ("x*dice", 2, r"train.loss: bad weight 'x' in 'x\*dice'"),
        ("-1*dice", 2, r"train.loss: weights must be > 0, got -1 in '-1\*dice'"),
        ("bce+dice", 3, r"train.loss: 'bce' is the two-class loss; with 3 classes use 'ce'"),
    ],
)
def test_bad_loss_names_are_clear(spec, num_classes, message):
    with pytest.raises(SegpipeError, match=message):
        build_loss(spec, num_classes)


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"train__loss": "mse"}, "train.loss: unknown loss 'mse' in 'mse'"),
        ({"train__loss": "2*"}, "train.loss: unknown loss '' in '2*'"),
        (
            {"data__classes": ["bg", "a", "b"], "train__loss": "bce+dice"},
            "train.loss: 'bce' is the two-class loss; with 3 classes use 'ce'",
        ),
    ],
)
def test_the_check_stage_names_a_bad_loss(tmp_path, edits, message):
    """params.yaml types ``train.loss`` as a string; its names are this module's to check,
    in the check stage (and when the train stage builds the loss)."""
    path = write_params(tmp_path / "params.yaml", **edits)
    with pytest.raises(SegpipeError, match=re.escape(message)):
        check.run(path)
