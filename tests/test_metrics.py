"""Metrics against hand-computed values and against segmentation_models_pytorch.metrics."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from segpipe.metrics import SegmentationMetrics, confusion_matrix, stat_scores


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
