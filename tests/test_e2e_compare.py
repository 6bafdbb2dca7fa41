"""`segpipe compare` on a real repository: a tag, the workspace and queued DVC experiments that
differ only in their training seed, the gallery, and the refusals (unknown revision, another
test set, a run evaluated before the fingerprint)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from segpipe.__main__ import main as segpipe_main

from .helpers import call, copy_reproduced, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory, experiments_template) -> tuple[Path, dict[str, str]]:
    """This module's copy of the session's experiments repository: the reproduced repository
    committed and tagged ``v1``, with two experiments at another lr that differ only in
    ``seed`` (seed1, seed2), run by `dvc queue start`."""
    template, env = experiments_template
    root = tmp_path_factory.mktemp("compare") / "repo"
    copy_reproduced(template, root)
    return root, env


def compare(repo, *args: object, code: int = 0):
    """`segpipe compare ARGS` in the repository, in this process (the command itself runs once,
    in the first test): its exit code checked, its output returned."""
    result = call(segpipe_main, "compare", *args, cwd=repo[0])
    assert result.returncode == code, result.stdout + result.stderr
    return result


def test_the_same_run_shows_no_difference(repo):
    root, env = repo
    args = ["compare", "v1", "HEAD", "workspace", "--json"]
    result = run([sys.executable, "-m", "segpipe", *args], root, env)  # the real command
    report = json.loads(result.stdout)
    assert [r["name"] for r in report["runs"]] == ["v1", "HEAD", "workspace"]
    assert report["runs"][0]["rev"] == report["runs"][1]["rev"] != report["runs"][2]["rev"]
    assert report["test_set"]["n_images"] == 6
    assert report["method"]["correction"] == "Holm over the 2 comparison(s), per metric"
    for comparison in report["comparisons"]:
        for d in comparison["metrics"]:
            assert d["difference"] == 0 and d["low"] == 0 and d["high"] == 0
            assert d["p_holm"] == 1 and d["verdict"] == "no clear difference"


def test_seed_experiments_form_a_group_against_the_tag(repo, tmp_path):
    result = compare(repo, "v1", "seed1", "seed2", "--json")
    report = json.loads(result.stdout)
    base, group = report["groups"]
    assert base["members"] == ["v1"] and group["members"] == ["seed1", "seed2"]
    assert group["seeds"] == [{"seed": 1}, {"seed": 2}]
    spread = group["scores"]["dice"]
    assert spread["min"] <= spread["mean"] <= spread["max"] and spread["sd"] is not None
    (comparison,) = report["comparisons"]
    dice = comparison["metrics"][0]
    assert dice["metric"] == "dice" and dice["other"] == pytest.approx(spread["mean"])
    assert dice["verdict"] in ("better", "worse", "no clear difference")
    assert dice["low"] <= dice["high"]
    assert compare(repo, "v1", "seed1", "seed2", "--json").stdout == result.stdout  # seeded

    # The text report and the gallery of one experiment against the tag.
    out = tmp_path / "gallery"
    shown = compare(repo, "v1", "seed1", "--gallery", out)
    assert "seed1 vs v1" in shown.stdout and "95% interval" in shown.stdout
    assert "training environment: the same in every run" in shown.stdout  # one machine
    assert shown.stdout.count("\n  dice ") == 1 and "\n  iou " in shown.stdout
    assert (out / "seed1" / "scatter.png").is_file()
    changed = (out / "seed1" / "changes.png").is_file()
    assert changed or "no test image's Dice changed" in shown.stderr


def test_unknown_revision_and_other_test_sets_are_refused_in_one_line(repo):
    root, env = repo
    result = compare(repo, "v1", "no-such-run", code=1)
    assert result.stderr.strip().splitlines() == [
        "error: no-such-run: no such git revision, tag or experiment (`dvc exp show` lists the "
        "experiments; `workspace` is the working tree)"
    ]
    fingerprint = root / "metrics" / "test_set.json"
    saved = fingerprint.read_text()
    try:
        relabelled = json.loads(saved)
        stem = sorted(relabelled["images"])[0]
        relabelled["images"][stem]["mask"] = "0" * 64
        fingerprint.write_text(json.dumps(relabelled))
        (line,) = compare(repo, "v1", "workspace", code=1).stderr.strip().splitlines()
        assert line.startswith("error: workspace was scored on other test images than v1 ")
        assert "(1 changed of 6)" in line
        fingerprint.unlink()
        (line,) = compare(repo, "v1", "workspace", code=1).stderr.strip().splitlines()
        assert line.startswith("error: workspace: no metrics/test_set.json at this revision")
    finally:
        fingerprint.write_text(saved)
