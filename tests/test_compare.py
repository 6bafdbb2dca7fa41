"""`segpipe compare`'s statistics on hand-made per-image counts, and the test-set fingerprint.
The command on real revisions and experiments is in test_e2e_compare.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from segpipe.commands import compare as compare_tool
from segpipe.errors import SegpipeError
from segpipe.evaluation import fingerprint, folds
from segpipe.evaluation.compare import (
    BETTER,
    UNCLEAR,
    WORSE,
    Difference,
    Revision,
    Run,
    compare,
    environment_note,
    group_runs,
    holm,
)
from segpipe.evaluation.folds import FOLD, FOLDS
from segpipe.metrics import count_columns, counts_of_table, counts_row, dataset_scores

from . import helpers
from .helpers import call

PARAMS = {"seed": 42, "train.lr": 0.001, "data.classes": ["background", "foreground"]}


def binary_counts(n: int, error: int, seed: int = 0) -> np.ndarray:
    """(n, 2, 3) counts: about 100 foreground pixels per image, ``error`` of them missed and
    ``error`` false alarms, give or take (so images differ)."""
    rng = np.random.default_rng(seed)
    tp = rng.integers(80, 120, n)
    fp = rng.integers(0, 2 * error + 1, n)
    fn = rng.integers(0, 2 * error + 1, n)
    background = np.stack([np.full(n, 1000), fn, fp], axis=1)  # background's fp: missed fg
    return np.stack([background, np.stack([tp, fp, fn], axis=1)], axis=1)


def run(name: str, counts: np.ndarray, **params: object) -> Run:
    return Run(name, counts, {**PARAMS, **params})


def test_identical_runs_have_a_zero_interval_and_no_verdict():
    counts = binary_counts(30, 10)
    groups, (comparison,) = compare([run("a", counts), run("b", counts.copy())], first=1)
    assert [g.name for g in groups] == ["a", "b"]
    for d in comparison.metrics:
        assert d.difference == 0 and d.low == 0 and d.high == 0
        assert d.p == 1 and d.p_holm == 1 and d.verdict == UNCLEAR


def test_a_clearly_better_run_is_better_and_the_report_is_seeded():
    a, b = run("a", binary_counts(30, 20)), run("b", binary_counts(30, 2, seed=1))
    _, (comparison,) = compare([a, b], first=1, resamples=500, seed=3)
    dice = comparison.metrics[0]
    assert dice.metric == "dice" and dice.verdict == BETTER
    assert dice.baseline == pytest.approx(dataset_scores(a.counts.sum(0), 1)["dice"])
    assert 0 < dice.low <= dice.difference <= dice.high
    assert compare([a, b], first=1, resamples=500, seed=3)[1][0] == comparison
    _, (reverse,) = compare([b, a], first=1, resamples=500, seed=3)
    assert reverse.metrics[0].verdict == WORSE


def test_holm_adjusts_the_p_values_step_down():
    found = [
        Difference("dice", 0.5, 0.6, 0.1, 0.0, 0.2, p, 1.0, UNCLEAR) for p in (0.01, 0.04, 0.03)
    ]
    adjusted = holm(found)
    assert [d.p_holm for d in adjusted] == pytest.approx([0.03, 0.06, 0.06])
    assert [d.verdict for d in adjusted] == [BETTER, UNCLEAR, UNCLEAR]
    assert [d.verdict for d in holm(found[1:2])] == [BETTER]  # alone, 0.04 passes


def test_runs_that_differ_only_in_seed_are_one_group_with_their_spread():
    runs = [
        run("s1", binary_counts(20, 10, seed=1), seed=1),
        run("s2", binary_counts(20, 12, seed=2), seed=2),
        run("lr1", binary_counts(20, 3, seed=3), seed=1, **{"train.lr": 0.01}),
        run("lr2", binary_counts(20, 4, seed=4), seed=2, **{"train.lr": 0.01}),
    ]
    assert group_runs(runs) == [[0, 1], [2, 3]]
    assert group_runs(runs, by_seed=False) == [[0], [1], [2], [3]]
    groups, (comparison,) = compare(runs, first=1)
    base, other = groups
    assert base.name == "s1+s2" and base.seeds == [{"seed": 1}, {"seed": 2}]
    dice = [float(dataset_scores(r.counts.sum(0), 1)["dice"]) for r in runs]
    spread = base.scores["dice"]
    assert spread.mean == pytest.approx(np.mean(dice[:2]))
    assert (spread.min, spread.max) == pytest.approx((min(dice[:2]), max(dice[:2])))
    assert spread.sd == pytest.approx(np.std(dice[:2], ddof=1))
    assert comparison.metrics[0].difference == pytest.approx(np.mean(dice[2:]) - np.mean(dice[:2]))


def test_runs_with_the_same_seed_or_all_in_one_group_stay_apart():
    same = [run("a", binary_counts(5, 1)), run("b", binary_counts(5, 1))]  # a code change
    assert group_runs(same) == [[0], [1]]
    seeds = [run("a", binary_counts(5, 1), seed=1), run("b", binary_counts(5, 1), seed=2)]
    assert group_runs(seeds) == [[0], [1]]  # one group alone: nothing to compare it with
    mixed = [
        *seeds,
        run("c", binary_counts(5, 1), seed=1),
        run("d", binary_counts(5, 2), seed=7, **{"train.lr": 1.0}),
    ]
    assert group_runs(mixed) == [[0, 1], [2], [3]]


def test_multiclass_compares_each_class():
    classes = ["background", "a", "b"]
    counts = np.concatenate([binary_counts(10, 5), binary_counts(10, 5, seed=2)[:, 1:]], axis=1)
    _, (comparison,) = compare([run("x", counts), run("y", counts)], first=1, class_names=classes)
    assert [d.metric for d in comparison.metrics] == [
        "dice",
        "iou",
        *(f"dice/{c}" for c in classes),
    ]


def test_per_image_counts_round_trip_through_the_table():
    counts = binary_counts(3, 2)
    table = pd.DataFrame([counts_row(c, ["background", "foreground"]) for c in counts])
    assert list(table.columns) == count_columns(["background", "foreground"])
    assert list(table.columns)[:3] == ["tp/background", "fp/background", "fn/background"]
    assert np.array_equal(counts_of_table(table, ["background", "foreground"]), counts)


def test_fingerprint_names_added_removed_and_changed_images(tmp_path):
    for name in ("1", "2", "3"):
        (tmp_path / f"{name}.jpg").write_bytes(name.encode())
        (tmp_path / f"{name}.png").write_bytes(b"mask" + name.encode())
    frame = pd.DataFrame(
        {"stem": s, "image": str(tmp_path / f"{s}.jpg"), "mask": str(tmp_path / f"{s}.png")}
        for s in ("2", "1")
    )
    base = fingerprint.write(tmp_path / "test_set.json", frame)
    assert list(base["images"]) == ["1", "2"] and base["n_images"] == 2
    assert not fingerprint.difference(base, fingerprint.fingerprint(frame.iloc[::-1]))
    (tmp_path / "2.png").write_bytes(b"relabelled")
    added = {"stem": "3", "image": str(tmp_path / "3.jpg"), "mask": str(tmp_path / "3.png")}
    other = fingerprint.fingerprint(pd.concat([frame, pd.DataFrame([added])]))  # 2 changed
    difference = fingerprint.difference(base, other)
    assert (difference.added, difference.removed, difference.changed) == (1, 0, 1)
    assert str(difference) == "1 added, 1 changed" and other["sha256"] != base["sha256"]
    assert str(fingerprint.difference(base, fingerprint.fingerprint(frame.iloc[1:]))) == "1 removed"


def test_the_command_wants_two_runs_and_a_dvc_repository(tmp_path):
    result = call(compare_tool.main, "v1")
    assert result.returncode == 2
    assert "give at least two runs" in result.stderr.strip().splitlines()[-1]
    result = call(compare_tool.main, "v1", "v2", "--repo", tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path}: not a DVC repository")


def test_the_report_says_whether_the_runs_were_trained_alike():
    env = {"cpu": "AMD EPYC", "isa": "avx512_bf16", "torch": "2.14.1", "threads": 2}
    env.update(precision="bf16", device="cpu", kernels="AVX512", onednn="3.12.0", cuda="")

    def revision(name, environment):
        return Revision(name, None, {}, pd.DataFrame(), {}, environment)

    same = environment_note([revision("a", env), revision("b", dict(env))])
    assert same.startswith("training environment: the same in every run (AMD EPYC, torch 2.14.1")
    xeon = {**env, "cpu": "Intel Xeon", "isa": "avx512_bf16 amx_bf16"}
    other = environment_note([revision("a", env), revision("b", xeon), revision("c", None)])
    assert other.startswith("training environment differs in cpu, isa: ")
    assert other.endswith("; not recorded for c")
    assert "not recorded" in environment_note([revision("a", None), revision("b", None)])


def test_a_single_run_against_a_seed_group_is_flagged_in_the_report():
    runs = [
        run("s1", binary_counts(20, 10, seed=1), seed=1),
        run("s2", binary_counts(20, 12, seed=2), seed=2),
        run("other", binary_counts(20, 3, seed=3), seed=1, **{"train.lr": 0.01}),
    ]
    groups, comparisons = compare(runs, first=1)
    report = compare_tool.render(groups, comparisons, "header")
    assert "other vs s1+s2" in report
    assert "note: one side is a single run, whose own seed noise is not in the interval" in report
    groups, comparisons = compare(runs, first=1, by_seed=False)  # every run on its own
    assert "note:" not in compare_tool.render(groups, comparisons, "header")


def fold_runs(k: int = 3, **params: object) -> list[Run]:
    """The k folds of one cross-validation, given out of order (2, 0, 1, ...)."""
    order = [*range(2, k), 0, 1]
    return [
        run(f"f{i}", binary_counts(12, 2 + i, seed=i), **{FOLDS: k, FOLD: i, **params})
        for i in order
    ]


def test_folds_are_summarised_in_order_with_mean_and_sd():
    runs = fold_runs(3)
    val = {"f0": 0.8, "f1": 0.9, "f2": None}
    summary = folds.summarize(runs, [val[r.name] for r in runs], first=1)
    assert [(f.fold, f.name) for f in summary.folds] == [(0, "f0"), (1, "f1"), (2, "f2")]
    by_name = {r.name: r for r in runs}
    dice = [float(dataset_scores(by_name[f"f{i}"].counts.sum(0), 1)["dice"]) for i in range(3)]
    assert [f.scores["dice"] for f in summary.folds] == pytest.approx(dice)
    assert summary.mean["dice"] == pytest.approx(np.mean(dice))
    assert summary.sd["dice"] == pytest.approx(np.std(dice, ddof=1))
    assert list(summary.mean) == ["val_dice", "dice", "iou"]
    assert summary.mean["val_dice"] is None  # fold 2 has no validation score recorded
    full = folds.summarize(runs, [0.8, 0.9, 0.7], first=1)  # in the order of the runs: f2 0.8
    assert [f.scores["val_dice"] for f in full.folds] == [0.9, 0.7, 0.8]
    assert full.mean["val_dice"] == pytest.approx(0.8) and full.sd["val_dice"] == pytest.approx(0.1)
    report = compare_tool.render_folds(full, "header")
    lines = report.splitlines()
    assert lines[2].split() == ["fold", "run", "val_dice", "dice", "iou"]
    assert lines[3].split()[:3] == ["0", "f0", "0.9000"]
    assert lines[-2].split()[:2] == ["mean", "0.8000"] and lines[-1].split()[:2] == ["sd", "0.1000"]


def test_multiclass_folds_give_each_class_dice():
    classes = ["background", "a", "b"]
    counts = np.concatenate([binary_counts(10, 5), binary_counts(10, 5, seed=2)[:, 1:]], axis=1)
    runs = [run(f"f{i}", counts, **{FOLDS: 2, FOLD: i}) for i in range(2)]
    summary = folds.summarize(runs, [0.5, 0.5], first=1, class_names=classes)
    assert list(summary.mean) == ["val_dice", "dice", "iou", *(f"dice/{c}" for c in classes)]
    assert summary.sd["dice"] == 0


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        (
            [run("a", binary_counts(3, 1)), run("b", binary_counts(3, 1))],
            "a: split.folds is null, so it is no fold of a cross-validation (set split.folds",
        ),
        (
            [*fold_runs(3)[:2], run("x", binary_counts(12, 1), **{FOLDS: 4, FOLD: 1})],
            "x has split.folds 4, f2 3: not folds of one run",
        ),
        (
            [*fold_runs(3)[:2], run("x", binary_counts(12, 1), **{FOLDS: 3, FOLD: 1, "seed": 7})],
            "x has seed 7, f2 42: folds of one run differ in split.fold alone",
        ),
        (
            [*fold_runs(3), run("x", binary_counts(12, 1), **{FOLDS: 3, FOLD: 1})],
            "f1 and x are both split.fold 1: give one run per fold",
        ),
        (
            fold_runs(4)[:2],
            "fold 0, 1 of the 4 folds (0..3) missing from the runs given (folds 2, 3): give one",
        ),
    ],
    ids=["no-folds", "other-k", "other-param", "twice", "missing"],
)
def test_runs_that_are_not_the_folds_of_one_run_fail_in_one_line(runs, message):
    with pytest.raises(SegpipeError) as err:
        folds.summarize(runs, [None] * len(runs), first=1)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_folds_take_no_gallery():
    result = call(compare_tool.main, "a", "b", "--folds", "--gallery", "g")
    assert result.returncode == 2
    assert "--folds: summarises the folds, with no --gallery" in result.stderr


def commit_fold(root, env, fold: int, val_dice: float) -> None:
    """Commit the files compare reads for fold ``fold`` of 3 (tagged ``fold<i>``): its params,
    its per-image counts on three test images, the test set's fingerprint, its val Dice."""
    classes = ["background", "foreground"]
    params = {
        "seed": 42,
        "split": {"folds": 3, "fold": fold},
        "data": {"classes": classes},
        "evaluate": {"include_background": False},
    }
    (root / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    table = pd.DataFrame([counts_row(c, classes) for c in binary_counts(3, 2 + fold, seed=fold)])
    table.insert(0, "stem", ["0001", "0002", "0003"])
    (root / "metrics" / "train").mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "metrics" / "per_image.csv", index=False)
    images = {s: {"image": s, "mask": s} for s in ("0001", "0002", "0003")}
    test_set = {"n_images": 3, "sha256": "ab" * 32, "images": images}
    (root / "metrics" / "test_set.json").write_text(json.dumps(test_set))
    record = {"best": {"epoch": 1, "val_dice": val_dice}}
    (root / "metrics" / "train" / "metrics.json").write_text(json.dumps(record))
    helpers.run(["git", "add", "-A"], root, env)
    helpers.run(["git", "commit", "-qm", f"fold {fold}"], root, env)
    helpers.run(["git", "tag", f"fold{fold}"], root, env)


def test_the_folds_are_read_at_their_revisions(tmp_path):
    from dvc.repo import Repo

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    helpers.run(["git", "init", "-q"], tmp_path, env)
    Repo.init(str(tmp_path)).close()
    for fold, val in enumerate((0.7, 0.8, 0.9)):
        commit_fold(tmp_path, env, fold, val)
    result = call(compare_tool.main, "--folds", "fold2", "fold0", "fold1", "--repo", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("3 folds of one run, each scored on the same 3 test images")
    assert [line.split()[:3] for line in lines[4:7]] == [
        ["0", "fold0", "0.7000"],
        ["1", "fold1", "0.8000"],
        ["2", "fold2", "0.9000"],
    ]
    report = json.loads(
        call(
            compare_tool.main, "--folds", "fold0", "fold1", "fold2", "--json", "--repo", tmp_path
        ).stdout
    )
    assert [f["rev"] is not None for f in report["folds"]] == [True] * 3
    assert report["mean"]["val_dice"] == pytest.approx(0.8)
    result = call(compare_tool.main, "--folds", "fold0", "fold1", "--repo", tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "error: fold 2 of the 3 folds (0..2) missing from the runs given (folds 0, 1): give one "
        "run per fold"
    )
