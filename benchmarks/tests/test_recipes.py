"""The recipes runner: recipes as checked overrides, queued as DVC experiments (a fake ``dvc``
records the commands), epochs from the budget, results read back from ``dvc exp show``."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks import recipes
from benchmarks.__main__ import main
from segpipe.config import read_yaml
from segpipe.errors import SegpipeError
from tests.helpers import REPO

TABLE = read_yaml(recipes.TABLE)
SCORES = {"dice": 0.8, "dice_ci95_low": 0.7, "dice_ci95_high": 0.9}
SCORES |= {"iou": 0.6, "iou_ci95_low": 0.5, "iou_ci95_high": 0.7}


def test_a_recipe_keeps_the_text_dvc_reads():
    name, overrides = recipes.parse_recipe(
        "aug: train.lr=1e-4 train.early_stopping=null "
        "'train.augment=[{HorizontalFlip: {p: 0.5}}]' train.optimizer=adamw",
        TABLE,
    )
    assert name == "aug"
    assert overrides == [
        "train.lr=1e-4",
        "train.early_stopping=null",
        "train.augment=[{HorizontalFlip: {p: 0.5}}]",
        "train.optimizer=adamw",
    ]
    assert recipes.parse_recipe("baseline", TABLE) == ("baseline", [])
    assert recipes.parse_recipe("tta", TABLE) == ("tta", ["evaluate.tta=flip"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("two words: train.lr=1", "expected a name or 'name: section.key=value ...'"),
        ("x: train.lr", "recipe x: 'train.lr' is not section.key=value"),
        ("nosuch", r"recipe 'nosuch': not in recipes.yaml \(baseline, adamw_cosine, "),
    ],
)
def test_bad_recipes_are_one_line_errors(text, message):
    with pytest.raises(SegpipeError, match=message):
        recipes.parse_recipe(text, TABLE)


def test_overrides_are_validated_like_params_yaml():
    base = read_yaml(REPO / "params.yaml")
    p = recipes.apply_overrides(base, ["train.optimizer=sgd", "train.momentum=0.5"])
    assert (p["train"]["optimizer"], p["train"]["momentum"]) == ("sgd", 0.5)
    assert base["train"]["optimizer"] == "adam", "the base mapping is not changed"
    params = REPO / "params.yaml"
    with pytest.raises(SegpipeError, match="recipe bad: unknown parameter 'train.lrr'"):
        recipes.check_recipes(params, [("ok", []), ("bad", ["train.lrr=1.0"])], [])
    with pytest.raises(SegpipeError, match="train.lr.x: train.lr is no section"):
        recipes.apply_overrides(base, ["train.lr.x=1"])
    with pytest.raises(SegpipeError, match="names must be unique"):
        recipes.check_recipes(params, [("a", []), ("a", [])], [])


def test_every_recipe_of_the_table_is_valid(tmp_path):
    """The table's overrides are valid params, also with a folder of data."""
    (tmp_path / "images").mkdir()
    data = recipes.data_overrides(tmp_path, "_mask")
    assert data[-1] == "data.mask_suffix=_mask" and f"data.path={tmp_path}" in data
    table = [recipes.parse_recipe(name, TABLE) for name in TABLE]
    recipes.check_recipes(REPO / "params.yaml", table, data)
    with pytest.raises(SegpipeError, match="no images/ folder"):
        recipes.data_overrides(tmp_path / "nowhere", "")


def test_the_budget_buys_whole_epochs():
    assert recipes.budget_epochs(240, 64.1, 100) == 3
    assert recipes.budget_epochs(10, 64, 100) == 1, "at least one"
    assert recipes.budget_epochs(1e6, 1, 5) == 5, "at most --max-epochs"


def experiment(name: str, epochs: int, epoch_s: float) -> dict:
    """One revision as ``dvc exp show --json`` lists it."""
    train = {"perf": {"epoch_seconds": epoch_s}, "best": {"epoch": epochs}}
    return {
        "rev": f"rev-{name}",
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"train": {"epochs": epochs}}}},
            "metrics": {
                "metrics/train/metrics.json": {"data": train},
                "metrics/evaluate.json": {"data": SCORES},
            },
        },
    }


class FakeDvc:
    """``subprocess.run`` for the runner: records every command (and the thread count it
    ran with); ``dvc exp run --run-all`` "runs" what was queued, with the epochs asked for."""

    def __init__(self, fail: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.threads: list[str] = []
        self.queued: list[dict] = []
        self.done: list[dict] = []
        self.fail = fail

    def __call__(self, command, *, capture_output, text, env, check):
        self.commands.append(command)
        out = ""
        if command[:4] == ["dvc", "exp", "run", "--queue"]:
            settings = dict(a.split("=", 1) for a in command[6:] if a != "-S")
            self.queued.append(experiment(command[5], int(settings["train.epochs"]), 10.0))
        elif command[:4] == ["dvc", "exp", "run", "--run-all"]:
            self.threads.append(env["OMP_NUM_THREADS"])
            self.done, self.queued = self.done + self.queued, []
        elif command[:3] == ["dvc", "exp", "show"]:
            head = {"rev": "workspace", "name": None, "data": {}}
            out = json.dumps([head, {**head, "experiments": [{"revs": self.done}]}])
        elif "compare" in command:
            out = "paired bootstrap: " + " vs ".join(command[-2:])
        if self.fail and self.fail in command:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: dvc said no\n")
        return subprocess.CompletedProcess(command, 0, out, "")


def test_runner_queues_one_experiment_per_recipe(monkeypatch, tmp_path, capsys):
    """A calibration run of the first recipe sets the epochs (10 s each: 35 s buy 3); a recipe
    with its own train.epochs keeps them; results come from dvc exp show."""
    (tmp_path / "images").mkdir()
    fake = FakeDvc()
    monkeypatch.setattr(subprocess, "run", fake)
    out = tmp_path / "recipes.json"
    args = ["recipes", "--budget-s", "35", "--data", str(tmp_path), "--json", str(out)]
    assert main([*args, "baseline", "short: train.epochs=2 train.lr=3e-4"]) == 0
    data = ["-S", "data.source=folder", "-S", "data.format=masks", "-S", f"data.path={tmp_path}"]
    queue = ["dvc", "exp", "run", "--queue", "-n"]
    assert [c for c in fake.commands if c[:4] == queue[:4]] == [
        [*queue, "baseline-calibration", *data, "-S", "train.epochs=2"],
        [*queue, "baseline", *data, "-S", "train.epochs=3"],
        [*queue, "short", *data, "-S", "train.epochs=2", "-S", "train.lr=3e-4"],
    ]
    runs = [c for c in fake.commands if "--run-all" in c]
    assert runs == [["dvc", "exp", "run", "--run-all", "-j", "1"]] * 2
    assert fake.commands.index(runs[0]) == 1, "the calibration ran before the recipes queued"
    assert fake.threads == ["1", "1"]
    assert fake.commands[-1][1:] == ["-m", "segpipe", "compare", "baseline", "short"]
    report = json.loads(out.read_text())
    assert report["epoch_s"] == 10.0 and report["compare"] == "paired bootstrap: baseline vs short"
    base, short = report["rows"]
    assert (base["recipe"], base["epochs"], short["recipe"], short["epochs"]) == (
        "baseline", 3, "short", 2
    )  # fmt: skip
    assert base["dice_ci95_low"] <= base["dice"] <= base["dice_ci95_high"]
    table = capsys.readouterr().out
    assert "| baseline | 3 | 3 | 10.0 | 0.800 [0.700, 0.900] |" in table


def test_a_given_epoch_cost_skips_the_calibration(monkeypatch, capsys):
    fake = FakeDvc()
    monkeypatch.setattr(subprocess, "run", fake)
    assert main(["recipes", "--budget-s", "100", "--epoch-s", "30", "--threads", "2", "tta"]) == 0
    assert fake.commands[0] == ["dvc", "exp", "run", "--queue", "-n", "tta"] + [
        "-S", "train.epochs=3", "-S", "evaluate.tta=flip"
    ]  # fmt: skip
    assert fake.threads == ["2"] and not any("compare" in c for c in fake.commands), "one recipe"


def test_bad_input_and_failed_runs_are_one_line_errors(monkeypatch, capsys):
    fake = FakeDvc(fail="--run-all")
    monkeypatch.setattr(subprocess, "run", fake)
    assert main(["recipes", "--budget-s", "9", "baseline", "bad: train.lrr=1"]) == 1
    assert "recipe bad: unknown parameter 'train.lrr'" in capsys.readouterr().err
    assert fake.commands == [], "nothing queued"
    assert main(["recipes", "--budget-s", "3", "--epoch-s", "3", "baseline"]) == 1
    assert "recipe baseline: train.warmup_epochs: must be in 0..train.epochs - 1 (0), got 1" in (
        capsys.readouterr().err
    ), "a budget of one epoch leaves no room for the warm-up epoch"
    assert main(["recipes", "--budget-s", "9", "--epoch-s", "3", "baseline"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: dvc exp run --run-all -j 1: exit status 1: ERROR: dvc said no"
