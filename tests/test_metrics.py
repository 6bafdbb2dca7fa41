"""Metrics against hand-computed values, textbook per-class definitions and
segmentation_models_pytorch.metrics, including empty classes and ignored pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from segpipe.constants import IGNORE
from segpipe.metrics import (
    SegmentationMetrics,
    ThresholdSweep,
    bootstrap_scores,
    confusion_matrix,
    stat_scores,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_hand_computed_binary():
    # 2x4 image: truth has 4 foreground pixels, prediction 3 of them plus 1 false positive.
    target = t([[[1, 1, 1, 1], [0, 0, 0, 0]]])
    pred = t([[[1, 1, 1, 0], [1, 0, 0, 0]]])
    m = SegmentationMetrics(2)
    dice, iou = m.update(pred, target)
    # tp=3 fp=1 fn=1 tn=3 -> dice 6/8, iou 3/5, accuracy 6/8
    assert dice == [pytest.approx(0.75)] and iou == [pytest.approx(0.6)]
    out = m.compute()
    assert out["dice"] == pytest.approx(0.75)
    assert out["iou"] == pytest.approx(0.6)
    assert out["pixel_accuracy"] == pytest.approx(0.75)


def test_dataset_level_sums_counts_not_averages_scores():
    m = SegmentationMetrics(2)
    # Image A: big object, perfect. Image B: tiny object, missed entirely.
    a_t = torch.zeros(1, 10, 10, dtype=torch.long)
    a_t[0, :5] = 1
    b_t = torch.zeros(1, 10, 10, dtype=torch.long)
    b_t[0, 0, 0] = 1
    m.update(a_t.clone(), a_t)
    m.update(torch.zeros_like(b_t), b_t)
    out = m.compute()
    # tp=50, fp=0, fn=1 over the dataset: dice = 100/101; per image: (1 + 0) / 2
    assert out["dice"] == pytest.approx(100 / 101)
    assert out["iou"] == pytest.approx(50 / 51)
    assert out["dice_per_image"] == pytest.approx(0.5)
    assert out["iou_per_image"] == pytest.approx(0.5)
    assert out["pixel_accuracy"] == pytest.approx(199 / 200)


def test_empty_truth_and_prediction_counts_as_perfect():
    m = SegmentationMetrics(2)
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    one = empty.clone()
    one[0, 0, 0] = 1
    assert m.update(empty, empty) == ([1.0], [1.0])  # nothing there, nothing predicted
    assert m.update(one, empty) == ([0.0], [0.0])  # nothing there, something predicted
    assert m.update(empty, one) == ([0.0], [0.0])  # something there, nothing predicted
    assert m.compute()["dice_per_image"] == pytest.approx(1 / 3)


def test_confusion_matrix_multiclass():
    target = t([[[0, 1, 2, 2]]])
    pred = t([[[0, 2, 2, 1]]])
    conf = confusion_matrix(pred, target, 3)[0]
    assert conf.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    tp, fp, fn, tn = stat_scores(conf)
    assert tp.tolist() == [1, 0, 1] and fp.tolist() == [0, 1, 1]
    assert fn.tolist() == [0, 1, 1] and tn.tolist() == [3, 2, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_smp_metrics_on_random_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(8, 32, 32, generator=g) > 0.6).long()
    pred = (torch.rand(8, 32, 32, generator=g) > 0.5).long()
    m = SegmentationMetrics(2)
    for i in range(0, 8, 3):  # uneven batches: accumulation must not depend on batching
        m.update(pred[i : i + 3], target[i : i + 3])
    out = m.compute()
    tp, fp, fn, tn = smp.metrics.get_stats(pred[:, None], target[:, None], mode="binary")
    assert out["dice"] == pytest.approx(smp.metrics.f1_score(tp, fp, fn, tn, "micro").item())
    assert out["iou"] == pytest.approx(smp.metrics.iou_score(tp, fp, fn, tn, "micro").item())
    assert out["pixel_accuracy"] == pytest.approx(
        smp.metrics.accuracy(tp, fp, fn, tn, "micro").item()
    )
    assert out["dice_per_image"] == pytest.approx(
        smp.metrics.f1_score(tp, fp, fn, tn, "micro-imagewise").item()
    )
    assert out["iou_per_image"] == pytest.approx(
        smp.metrics.iou_score(tp, fp, fn, tn, "micro-imagewise").item()
    )


def test_multiclass_counts_match_smp():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (5, 16, 16), generator=g)
    pred = torch.randint(0, 4, (5, 16, 16), generator=g)
    tp, fp, fn, tn = stat_scores(confusion_matrix(pred, target, 4))
    s_tp, s_fp, s_fn, s_tn = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=4)
    assert torch.equal(tp, s_tp) and torch.equal(fp, s_fp)
    assert torch.equal(fn, s_fn) and torch.equal(tn, s_tn)


def test_bootstrap_interval_brackets_the_score_and_is_seeded():
    g = torch.Generator().manual_seed(5)
    m = SegmentationMetrics(2)
    m.update(
        (torch.rand(40, 16, 16, generator=g) > 0.5).long(),
        (torch.rand(40, 16, 16, generator=g) > 0.6).long(),
    )
    out = m.compute()
    ci = m.bootstrap_interval(resamples=300, seed=1)
    assert ci == m.bootstrap_interval(resamples=300, seed=1)
    assert ci["dice_ci95_low"] < out["dice"] < ci["dice_ci95_high"]
    assert ci["iou_ci95_low"] < out["iou"] < ci["iou_ci95_high"]
    assert ci["dice_ci95_high"] - ci["dice_ci95_low"] < 0.1


def test_bootstrap_of_identical_images_has_no_spread():
    m = SegmentationMetrics(2)
    target = torch.zeros(10, 4, 4, dtype=torch.long)
    target[:, :2] = 1
    pred = target.clone()
    pred[:, 0, 0] = 0
    m.update(pred, target)
    ci = m.bootstrap_interval(resamples=50)
    assert ci["dice_ci95_low"] == pytest.approx(ci["dice_ci95_high"])
    assert ci["dice_ci95_low"] == pytest.approx(m.compute()["dice"])


# --- multi-class, empty classes, ignore_index -------------------------------------------------

NAN = float("nan")


def test_hand_computed_three_classes():
    # truth:      0 0 1 1 | 2 2 2 255      prediction: 0 1 1 1 | 2 2 0 2  (255 = ignored)
    target = t([[[0, 0, 1, 1], [2, 2, 2, IGNORE]]])
    pred = t([[[0, 1, 1, 1], [2, 2, 0, 2]]])
    m = SegmentationMetrics(3)
    dice, iou = m.update(pred, target)
    # class 0: tp1 fp1 fn1; class 1: tp2 fp1 fn0; class 2: tp2 fp0 fn1 (the ignored pixel
    # predicted as 2 counts nowhere)
    out = m.compute(["bg", "road", "car"])
    assert out["dice/bg"] == pytest.approx(2 / 4) and out["iou/bg"] == pytest.approx(1 / 3)
    assert out["dice/road"] == pytest.approx(4 / 5) and out["iou/road"] == pytest.approx(2 / 3)
    assert out["dice/car"] == pytest.approx(4 / 5) and out["iou/car"] == pytest.approx(2 / 3)
    assert out["precision/road"] == pytest.approx(2 / 3) and out["recall/road"] == 1.0
    assert out["precision/car"] == 1.0 and out["recall/car"] == pytest.approx(2 / 3)
    assert out["precision/bg"] == pytest.approx(0.5) and out["recall/bg"] == pytest.approx(0.5)
    # means over the foreground classes (road, car)
    assert out["dice"] == pytest.approx(0.8) and out["iou"] == pytest.approx(2 / 3)
    assert out["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["recall"] == pytest.approx((1 + 2 / 3) / 2)
    # micro over road+car: tp 4, fp 1, fn 1
    assert out["dice_micro"] == pytest.approx(8 / 10) and out["iou_micro"] == pytest.approx(4 / 6)
    assert dice == [pytest.approx(0.8)] and iou == [pytest.approx(4 / 6)]
    assert out["pixel_accuracy"] == pytest.approx(5 / 7)
    # with background in the means
    with_bg = SegmentationMetrics(3, include_background=True)
    with_bg.update(pred, target)
    out_bg = with_bg.compute()
    assert out_bg["dice"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert out_bg["iou"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert out_bg["dice_micro"] == pytest.approx(out_bg["pixel_accuracy"])  # all classes


def test_empty_classes_are_left_out_of_the_means():
    target = t([[[0, 0, 1, 1]]])
    pred = t([[[0, 2, 1, 1]]])
    m = SegmentationMetrics(4)
    m.update(pred, target)
    out = m.compute(["bg", "a", "b", "c"])
    assert math.isnan(out["dice/c"]) and math.isnan(out["precision/c"])  # nowhere at all
    assert out["dice/b"] == 0.0 and out["precision/b"] == 0.0  # predicted, never true
    assert out["recall/b"] == 0.0  # 0/0 for a class that was predicted: 0, not NaN
    assert out["dice/a"] == 1.0
    assert out["dice"] == pytest.approx(0.5)  # (a 1.0 + b 0.0) / 2; c has no score


def test_ignored_pixels_count_nowhere():
    g = torch.Generator().manual_seed(11)
    target = torch.randint(0, 3, (4, 16, 16), generator=g)
    pred = torch.randint(0, 3, (4, 16, 16), generator=g)
    ignored = torch.rand(4, 16, 16, generator=g) > 0.7
    with_ignore = SegmentationMetrics(3)
    with_ignore.update(pred, torch.where(ignored, IGNORE, target))
    # Same as scoring only the kept pixels (flattened into one row per image is not needed:
    # dataset-level counts do not depend on image shape).
    kept = SegmentationMetrics(3)
    kept.update(pred[~ignored][None], target[~ignored][None])
    a, b = with_ignore.compute(["x", "y", "z"]), kept.compute(["x", "y", "z"])
    for key in ("dice", "iou", "precision", "recall", "pixel_accuracy", "dice/z", "iou/x"):
        assert a[key] == pytest.approx(b[key])
    assert with_ignore.confusion.sum() == (~ignored).sum()


def reference_scores(pred, target, num_classes, first, ignore=IGNORE):
    """Textbook (torchmetrics-style) definitions with boolean masks, one class at a time."""
    keep = target != ignore
    p, y = pred[keep].numpy(), target[keep].numpy()
    per_class = {name: [] for name in ("dice", "iou", "precision", "recall")}
    for c in range(num_classes):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        if tp + fp + fn == 0:
            for values in per_class.values():
                values.append(np.nan)
            continue
        per_class["dice"].append(2 * tp / (2 * tp + fp + fn))
        per_class["iou"].append(tp / (tp + fp + fn))
        per_class["precision"].append(tp / (tp + fp) if tp + fp else 0.0)
        per_class["recall"].append(tp / (tp + fn) if tp + fn else 0.0)
    means = {k: float(np.nanmean(v[first:])) for k, v in per_class.items()}
    return per_class, means, float(np.mean(p == y))


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_matches_smp_and_reference_definitions(seed, include_background):
    g = torch.Generator().manual_seed(seed)
    n, c = 6, 5
    target = torch.randint(0, c - 1, (n, 24, 24), generator=g)  # class 4 never true...
    pred = torch.randint(0, c - 1, (n, 24, 24), generator=g)  # ...nor predicted: empty
    target[torch.rand(n, 24, 24, generator=g) > 0.8] = IGNORE
    m = SegmentationMetrics(c, include_background=include_background)
    for i in range(0, n, 4):
        m.update(pred[i : i + 4], target[i : i + 4])
    names = [f"k{i}" for i in range(c)]
    out = m.compute(names)
    first = 0 if include_background else 1

    per_class, means, accuracy = reference_scores(pred, target, c, first)
    for name, values in per_class.items():
        for k, value in enumerate(values):
            got = out[f"{name}/k{k}"]
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value)
        assert out[name] == pytest.approx(means[name])
    assert out["pixel_accuracy"] == pytest.approx(accuracy)

    tp, fp, fn, tn = smp.metrics.get_stats(
        pred, target, mode="multiclass", num_classes=c, ignore_index=IGNORE
    )
    present = slice(first, c - 1)  # smp scores the empty class 4 as 0 or 1, we leave it out
    totals = [x.sum(0, keepdim=True) for x in (tp, fp, fn, tn)]
    smp_iou = smp.metrics.iou_score(*totals, reduction="none")[0]
    smp_f1 = smp.metrics.f1_score(*totals, reduction="none")[0]
    for k in range(first, c - 1):
        assert out[f"iou/k{k}"] == pytest.approx(smp_iou[k].item())
        assert out[f"dice/k{k}"] == pytest.approx(smp_f1[k].item())
    assert out["iou"] == pytest.approx(smp_iou[present].mean().item())
    sub = [x[:, present] for x in (tp, fp, fn, tn)]
    assert out["dice_micro"] == pytest.approx(smp.metrics.f1_score(*sub, "micro").item())
    assert out["iou_micro"] == pytest.approx(smp.metrics.iou_score(*sub, "micro").item())
    assert out["dice_per_image"] == pytest.approx(
        smp.metrics.f1_score(*sub, "micro-imagewise").item()
    )
    assert out["iou_per_image"] == pytest.approx(
        smp.metrics.iou_score(*sub, "micro-imagewise").item()
    )


def test_bootstrap_without_spread_multiclass_matches_compute():
    target = t([[[0, 1, 2, 2]]] * 5)[:, 0]
    pred = t([[[0, 1, 2, 1]]] * 5)[:, 0]
    m = SegmentationMetrics(3)
    m.update(pred, target)
    ci = m.bootstrap_interval(resamples=20)
    assert ci["iou_ci95_low"] == pytest.approx(m.compute()["iou"])


# --- threshold sweep ---------------------------------------------------------------------------


def test_threshold_sweep_counts_are_exact():
    g = torch.Generator().manual_seed(4)
    prob = torch.rand(2, 20, 20, generator=g)
    prob[0, 0, :5] = torch.tensor([0.5, 0.01, 0.99, 0.0, 1.0])  # exactly on thresholds
    target = (torch.rand(2, 20, 20, generator=g) > 0.6).long()
    target[1, :3] = IGNORE
    sweep = ThresholdSweep()
    for i in range(2):
        sweep.update(prob[i], target[i])
    rows = sweep.curve()
    assert [r["threshold"] for r in rows][:3] == [0.01, 0.02, 0.03] and len(rows) == 99
    keep = target != IGNORE
    p, y = prob[keep], target[keep] == 1
    for row in rows:
        predicted = p > row["threshold"]  # the rule prediction uses
        tp = (predicted & y).sum().item()
        fp = (predicted & ~y).sum().item()
        fn = (~predicted & y).sum().item()
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
        assert row["recall"] == pytest.approx(tp / (tp + fn))
    best = sweep.best()
    assert best["dice"] == max(r["dice"] for r in rows)


def test_threshold_sweep_at_half_equals_the_metrics_at_half():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 16, 16, generator=g)
    target = (torch.rand(3, 16, 16, generator=g) > 0.5).long()
    sweep, m = ThresholdSweep(), SegmentationMetrics(2)
    for i in range(3):
        sweep.update(torch.sigmoid(logits[i]), target[i])
        m.update((torch.sigmoid(logits[i]) > 0.5).long()[None], target[i][None])
    at_half = next(r for r in sweep.curve() if r["threshold"] == 0.5)
    assert at_half["dice"] == pytest.approx(m.compute()["dice"])


# Per-image (C=2, 3) counts: tp, fp, fn of background (unused) and foreground.
PERFECT = np.array([[0, 0, 0], [1, 0, 0]])  # foreground Dice 1
WRONG = np.array([[0, 0, 0], [0, 1, 0]])  # foreground Dice 0


def test_bootstrap_of_two_images_on_known_outcomes():
    """Two images, one right, one wrong: a resample holds two copies of one (Dice 1 or 0,
    each with probability 1/4) or one of each (summed counts tp 1, fp 1: Dice 2/3, 1/2)."""
    (draws,) = bootstrap_scores([np.stack([PERFECT, WRONG])], 1, resamples=4000, seed=0)
    values, counts = np.unique(np.round(draws["dice"], 6), return_counts=True)
    assert values.tolist() == [0.0, round(2 / 3, 6), 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert draws["iou"].max() == 1.0 and round(float(np.median(draws["iou"])), 6) == 0.5


def test_bootstrap_interval_is_the_percentiles_of_the_draws():
    metrics = SegmentationMetrics(2)
    metrics.image_counts = [PERFECT, WRONG, PERFECT]
    (draws,) = bootstrap_scores([np.stack(metrics.image_counts)], 1, seed=3)
    interval = metrics.bootstrap_interval(seed=3)
    assert interval["dice_ci95_low"] == float(np.percentile(draws["dice"], 2.5))
    assert interval["dice_ci95_high"] == float(np.percentile(draws["dice"], 97.5))
