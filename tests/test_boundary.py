"""Boundary metrics (HD95, NSD) against hand-computed cases, the empty cases MONAI defines,
several classes and ignored pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from segpipe.constants import IGNORE
from segpipe.evaluation.boundary import (
    BoundaryMetrics,
    boundary,
    hd95_nsd,
    image_scores,
    nearest,
)


def square(size: int = 40, top: int = 10, left: int = 10, side: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_the_boundary_is_the_pixels_a_cross_erosion_removes():
    mask = square(size=6, top=1, left=1, side=4)
    ring = mask.copy()
    ring[2:4, 2:4] = False
    assert (boundary(mask) == ring).all()
    # a mask touching the image's edge has its boundary there
    assert boundary(np.ones((3, 3), dtype=bool)).sum() == 8


@pytest.mark.parametrize("shift", [1, 3, 5])
def test_a_square_shifted_by_k_pixels_has_hd95_k(shift):
    truth = square()
    pred = square(left=10 + shift)
    hd95, nsd = hd95_nsd(pred, truth, tolerance=shift)
    assert hd95 == pytest.approx(shift)
    assert nsd == 1.0  # every boundary pixel within the tolerance
    _, tight = hd95_nsd(pred, truth, tolerance=shift - 0.5)
    assert 0 < tight < 1


def test_nsd_counts_the_boundary_pixels_within_the_tolerance_by_hand():
    # truth: a 1x4 bar; pred: the same bar and one pixel 3 rows below its first pixel.
    truth = np.zeros((8, 8), dtype=bool)
    truth[2, 2:6] = True
    pred = truth.copy()
    pred[5, 2] = True
    # boundaries are the masks themselves: pred -> truth distances 0,0,0,0,3; truth -> pred 0s.
    hd95, nsd = hd95_nsd(pred, truth, tolerance=2)
    assert nsd == pytest.approx(8 / 9)
    assert hd95 == pytest.approx(np.percentile([0, 0, 0, 0, 3], 95))  # 2.4, linear
    assert hd95_nsd(pred, truth, tolerance=3)[1] == 1.0


def test_identical_masks_score_hd95_0_and_nsd_1():
    assert hd95_nsd(square(), square(), tolerance=0) == (0.0, 1.0)


def test_empty_cases_follow_monai():
    empty, some = np.zeros((8, 8), dtype=bool), square(size=8, top=2, left=2, side=3)
    hd95, nsd = hd95_nsd(empty, empty, tolerance=2)  # nothing to measure
    assert math.isnan(hd95) and math.isnan(nsd)
    assert hd95_nsd(empty, some, tolerance=2) == (math.inf, 0.0)  # missed
    assert hd95_nsd(some, empty, tolerance=2) == (math.inf, 0.0)  # hallucinated


def test_cropping_changes_no_distance():
    # objects at the image's edges and far apart: distances as in the full image
    truth = np.zeros((30, 50), dtype=bool)
    truth[0:5, 0:5] = True
    pred = np.zeros_like(truth)
    pred[25:30, 45:50] = True
    hd95, nsd = hd95_nsd(pred, truth, tolerance=1)
    assert hd95 == pytest.approx(np.percentile(far_distances(pred, truth), 95))
    assert nsd == 0.0


def test_the_tree_and_the_distance_transform_agree():
    rng = np.random.default_rng(0)
    for density in (0.001, 0.5):  # few boundary pixels (tree) and noise (transform)
        a, b = rng.random((60, 80)) < density, rng.random((60, 80)) < density
        a[0, 0] = b[-1, -1] = True
        edge_a, edge_b = boundary(a), boundary(b)
        transform = ndimage.distance_transform_edt(~edge_b)[edge_a]
        assert np.allclose(nearest(edge_a, edge_b), transform)
        assert np.allclose(far_distances(a, b), transform)


def far_distances(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Brute force: each pred boundary pixel's distance to the nearest truth boundary pixel."""
    a, b = np.argwhere(boundary(pred)), np.argwhere(boundary(truth))
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)


def test_per_class_scores_of_label_maps_and_ignored_pixels():
    truth = np.zeros((40, 40), dtype=np.uint8)
    truth[square()] = 1
    truth[30:36, 30:36] = 2
    pred = np.zeros_like(truth)
    pred[square(left=12)] = 1  # class 1 shifted by 2; class 2 missed; class 3 nowhere
    scores = image_scores(pred, truth, num_classes=4, tolerance=2)
    assert scores[0].tolist() == [pytest.approx(2.0), 1.0]
    assert scores[1].tolist() == [math.inf, 0.0]
    assert np.isnan(scores[2]).all()
    # prediction on ignored truth pixels belongs to no class
    truth[0:4, 0:4] = IGNORE
    pred[0:4, 0:4] = 2
    assert image_scores(pred, truth, num_classes=4, tolerance=2)[1].tolist() == [math.inf, 0.0]


def test_dataset_means_leave_out_undefined_and_count_infinite():
    metrics = BoundaryMetrics(["background", "a", "b"], tolerance=1.0)
    truth = np.zeros((40, 40), dtype=np.uint8)
    truth[square()] = 1
    shifted = np.zeros_like(truth)
    shifted[square(left=14)] = 1  # a: hd95 4, b absent from both
    row = metrics.update(shifted, truth)
    assert row["hd95"] == pytest.approx(4.0) and row["hd95/a"] == pytest.approx(4.0)
    assert math.isnan(row["nsd/b"]) and row["nsd"] == row["nsd/a"] < 1
    missed = truth.copy()
    missed[30:34, 30:34] = 2  # b in the truth only: hd95 infinite, nsd 0
    row = metrics.update(truth, missed)
    assert row["hd95"] == math.inf and row["hd95/a"] == 0.0 and row["nsd/b"] == 0.0
    out = metrics.compute()
    assert out["hd95/a"] == pytest.approx(2.0)  # mean of 4 and 0
    assert math.isnan(out["hd95/b"])  # never finite
    assert out["hd95"] == pytest.approx(2.0)  # b left out
    assert out["hd95_n_infinite"] == 1
    assert out["nsd/b"] == 0.0
    assert out["nsd"] == pytest.approx((out["nsd/a"] + 0.0) / 2)
    assert out["boundary_tolerance"] == 1.0


def test_nothing_scored_is_nan():
    out = BoundaryMetrics(["background", "a"], tolerance=2).compute()
    assert math.isnan(out["hd95"]) and math.isnan(out["nsd/a"]) and out["hd95_n_infinite"] == 0
