"""The benchmark's recipes mode: overrides, the bootstrap maths, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import bench, recipes
from segpipe.config import read_yaml
from segpipe.errors import SegpipeError
from segpipe.metrics import SegmentationMetrics, bootstrap_scores
from tests.helpers import REPO, tiny_params, write_params

# Per-image (C=2, 3) counts: tp, fp, fn of background (unused) and foreground.
PERFECT = np.array([[0, 0, 0], [1, 0, 0]])  # foreground Dice 1
WRONG = np.array([[0, 0, 0], [0, 1, 0]])  # foreground Dice 0


def test_parse_recipe_reads_values_as_dvc_does():
    name, overrides = recipes.parse_recipe(
        "aug: train.lr=1e-4 train.early_stopping=null "
        "'train.augment=[{HorizontalFlip: {p: 0.5}}]' train.optimizer=adamw"
    )
    assert name == "aug"
    assert overrides == {
        "train.lr": 1e-4,
        "train.early_stopping": None,
        "train.augment": [{"HorizontalFlip": {"p": 0.5}}],
        "train.optimizer": "adamw",
    }
    assert recipes.parse_recipe("baseline") == ("baseline", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("two words: train.lr=1", "expected 'name: section.key=value ...'"),
        ("x: train.lr", "--recipe x: 'train.lr' is not section.key=value"),
    ],
)
def test_bad_recipes_are_one_line_errors(text, message):
    with pytest.raises(SegpipeError, match=message):
        recipes.parse_recipe(text)


def test_overrides_are_validated_like_params_yaml():
    base = read_yaml(REPO / "params.yaml")
    p = recipes.recipe_params(base, {"train.optimizer": "sgd", "train.momentum": 0.5}, 3)
    assert (p.train.optimizer, p.train.momentum, p.train.epochs) == ("sgd", 0.5, 3)
    assert recipes.recipe_params(base, {"train.epochs": 2}, 5).train.epochs == 2, "its own"
    assert base["train"]["optimizer"] == "adam", "the base mapping is not changed"
    with pytest.raises(SegpipeError, match="unknown parameter 'train.lrr'"):
        recipes.recipe_params(base, {"train.lrr": 1.0}, None)
    with pytest.raises(SegpipeError, match="train.lr.x: train.lr is no section"):
        recipes.apply_overrides(base, {"train.lr.x": 1})


def test_bootstrap_of_two_images_on_known_outcomes():
    """Two images, one right, one wrong: a resample holds two copies of one (Dice 1 or 0,
    each with probability 1/4) or one of each (summed counts tp 1, fp 1: Dice 2/3, 1/2)."""
    (draws,) = bootstrap_scores([np.stack([PERFECT, WRONG])], 1, resamples=4000, seed=0)
    values, counts = np.unique(np.round(draws["dice"], 6), return_counts=True)
    assert values.tolist() == [0.0, round(2 / 3, 6), 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert draws["iou"].max() == 1.0 and round(float(np.median(draws["iou"])), 6) == 0.5


def test_bootstrap_interval_is_the_evaluate_codes():
    metrics = SegmentationMetrics(2)
    metrics.image_counts = [PERFECT, WRONG, PERFECT]
    (draws,) = bootstrap_scores([np.stack(metrics.image_counts)], 1, seed=3)
    interval = metrics.bootstrap_interval(seed=3)
    assert interval["dice_ci95_low"] == float(np.percentile(draws["dice"], 2.5))
    assert interval["dice_ci95_high"] == float(np.percentile(draws["dice"], 97.5))


def test_paired_difference_uses_the_same_resamples():
    """A model against itself differs by exactly 0 in every resample; one that fixes the
    wrong image of two gains in every resample that holds it."""
    counts = np.stack([PERFECT, WRONG])
    same = recipes.paired_differences(counts, counts, 1, seed=0)
    assert same == {
        "dice_diff": 0.0,
        "iou_diff": 0.0,
        "dice_diff_ci95_low": 0.0,
        "dice_diff_ci95_high": 0.0,
        "iou_diff_ci95_low": 0.0,
        "iou_diff_ci95_high": 0.0,
    }
    better = recipes.paired_differences(counts, np.stack([PERFECT, PERFECT]), 1, seed=0)
    # gains: +0 (two PERFECT drawn, 1/4), +1/3 (one of each, 1/2), +1 (two WRONG, 1/4)
    assert better["dice_diff"] == pytest.approx(0.25 * 0 + 0.5 / 3 + 0.25 * 1, abs=0.03)
    assert better["dice_diff_ci95_low"] == 0.0 and better["dice_diff_ci95_high"] == 1.0


def test_recipes_on_tiny_data(tmp_path, raw_dir, capsys):
    """Two recipes on one split: each trained within the budget and scored by the evaluate
    code on the same test images; the table and JSON carry intervals and the difference."""
    params = write_params(tmp_path / "params.yaml", tiny_params())
    out = tmp_path / "recipes.json"
    threads = torch.get_num_threads()
    code = bench.main(
        [
            "recipes", "--data", str(raw_dir), "--params", str(params), "--budget-cpu-s", "1e6",
            "--max-epochs", "1", "--recipe", "base",
            "--recipe", "adamw: train.optimizer=adamw train.weight_decay=0.01",
            "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert torch.get_num_threads() == threads, "the thread count is put back"
    report = json.loads(out.read_text())
    base, adamw = report["rows"]
    assert [base["recipe"], adamw["recipe"]] == ["base", "adamw"]
    for row in (base, adamw):
        assert row["epochs"] == 1 and row["train_cpu_s"] > 0 and row["train_wall_s"] > 0
        assert row["dice_ci95_low"] <= row["dice"] <= row["dice_ci95_high"]
        assert row["iou_ci95_low"] <= row["iou"] <= row["iou_ci95_high"]
    assert "dice_diff" not in base
    assert adamw["dice_diff_ci95_low"] <= adamw["dice_diff"] <= adamw["dice_diff_ci95_high"]
    table = capsys.readouterr().out
    assert "| base | 1 |" in table and "| adamw | 1 |" in table


def test_counts_of_written_predictions_give_the_evaluate_score(tmp_path, tiny_run):
    """The paired bootstrap re-reads the masks evaluate wrote: their counts reduce to the
    Dice evaluate reported."""
    from segpipe.evaluation import evaluate

    p = tiny_params()
    preds = tmp_path / "predictions"
    splits = tiny_run / "splits"
    result = evaluate.run(
        p, tiny_run / "model.pt", splits, tmp_path / "m.json", tmp_path / "pi.csv", preds
    )
    counts = recipes.scored_counts(splits, preds, p)
    tp, fp, fn = counts[:, 1].sum(axis=0)
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(result["dice"])
