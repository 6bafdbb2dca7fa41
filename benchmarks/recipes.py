"""Training recipes compared at an equal training budget, as DVC experiments.

    python -m benchmarks recipes --budget-s 240 [--data DIR] baseline rich_aug \\
        'adamw: train.optimizer=adamw train.warmup_epochs=1'

A recipe is a list of ``section.key=value`` overrides of ``params.yaml``, exactly as
``dvc exp run -S`` takes them: a name from ``benchmarks/recipes.yaml``, or ``'name: overrides'``
on the command line. Every override is checked against the params file before anything is
queued. Each recipe is then queued as one experiment (``dvc exp run --queue -n NAME -S ...``),
the queue runs one experiment at a time (``dvc exp run --run-all -j 1``), and the results are
read back from ``dvc exp show --json``: they stay in ``dvc exp show`` like any experiment, and
``segpipe compare`` (run at the end) gives the paired bootstrap of each recipe against the first.
``--data DIR`` (images/ + masks/) sets ``data.source: folder`` and ``data.path`` in every recipe;
without it the params file's data is used. The split is the split stage's, so every recipe
meets the same test images.

The budget buys epochs: every recipe that does not set ``train.epochs`` itself gets
``floor(budget / epoch cost)`` epochs (at most ``--max-epochs``), so its schedule (warm-up,
cosine) completes and the experiment records the epochs it ran. Why not stop each run when
its budget is spent, as an earlier in-process harness did? A run stopped from the outside
either fails (DVC then runs no evaluate stage) or, if training swallowed the signal, would be
recorded by DVC under a ``train.epochs`` it did not run, and its run cache would replay that
result for those params. Setting ``train.epochs`` keeps every experiment a plain, reproducible
one. The epoch cost is ``--epoch-s`` if given, else measured: the first recipe runs first as
experiment ``<first>-calibration`` with ``train.epochs=2``, and its second epoch's
``perf/epoch_seconds`` (the train stage's own wall time of the training batches, which
``dvc exp show`` lists) is the cost. So the budget is wall seconds of training batches
(validation comes on top); torch runs ``--threads`` threads (``OMP_NUM_THREADS`` of the queue's
worker), and on a busy machine a slow calibration buys fewer epochs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segpipe.config import parse_params, read_yaml, yaml_value
from segpipe.errors import SegpipeError

TABLE = Path(__file__).with_name("recipes.yaml")
CALIBRATION_EPOCHS = 2
"""Epochs of the calibration run: its last one is past the first epoch's warm-up costs."""

Recipe = tuple[str, list[str]]
"""A recipe's name and its ``section.key=value`` overrides, as ``dvc exp run -S`` takes them."""


def parse_recipe(text: str, table: dict[str, list[str]]) -> Recipe:
    """A name of ``table``, or ``"name: section.key=value ..."`` (shell-quoted values).

    Raises:
        SegpipeError: an unknown name (listing the table's), no name, or no ``=``.
    """
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise SegpipeError(f"recipe {text!r}: expected a name or 'name: section.key=value ...'")
    if not colon:
        if name not in table:
            raise SegpipeError(f"recipe {name!r}: not in {TABLE.name} ({', '.join(table)})")
        return name, list(table[name])
    overrides = shlex.split(rest)
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key:
            raise SegpipeError(f"recipe {name}: {item!r} is not section.key=value")
    return name, overrides


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` with each ``key=value`` set, the value read as YAML
    (unknown keys fail when the result is validated, naming them).

    Raises:
        SegpipeError: a key whose section is no mapping (``train.lr.x=1``).
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, _, value = item.partition("=")
        *sections, leaf = key.split(".")
        node = out
        for i, section in enumerate(sections):
            node = node.get(section) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                where = ".".join(sections[: i + 1])
                raise SegpipeError(f"{key}: {where} is no section of the params file")
        node[leaf] = yaml_value(value)
    return out


def check_recipes(params_file: Path, recipes: list[Recipe], data: list[str]) -> None:
    """Validate every recipe's params, as the stages will, before anything is queued."""
    names = [name for name, _ in recipes]
    if len(set(names)) != len(names):
        raise SegpipeError(f"recipe names must be unique, got {names}")
    base = read_yaml(params_file)
    for name, overrides in recipes:
        try:
            parse_params(apply_overrides(base, data + overrides))
        except SegpipeError as e:
            raise SegpipeError(f"recipe {name}: {e}") from None


def data_overrides(data: Path | None, mask_suffix: str) -> list[str]:
    """The overrides that point every recipe at ``data`` (none: the params file's data)."""
    if data is None:
        return []
    if not (data / "images").is_dir():
        raise SegpipeError(f"--data {data}: no images/ folder (expected images/ and masks/)")
    out = ["data.source=folder", "data.format=masks", f"data.path={data.resolve()}"]
    return out + ([f"data.mask_suffix={mask_suffix}"] if mask_suffix else [])


def run(*command: str, stream: bool = False, env: dict[str, str] | None = None) -> str:
    """Run ``command`` (its output shown as it comes with ``stream``); its stdout.

    Raises:
        SegpipeError: a non-zero exit, with the command and its last error line.
    """
    done = subprocess.run(list(command), capture_output=not stream, text=True, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr or "").strip().splitlines() or ["see its output above"]
        raise SegpipeError(f"{shlex.join(command)}: exit status {done.returncode}: {last[-1]}")
    return done.stdout or ""


def queue(name: str, overrides: list[str]) -> None:
    """``dvc exp run --queue -n NAME -S override ...``."""
    run("dvc", "exp", "run", "--queue", "-n", name, *(a for o in overrides for a in ("-S", o)))


def run_queue(threads: int) -> None:
    """Run every queued experiment, one at a time, and wait for them (``dvc exp run
    --run-all`` follows each one's output)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run("dvc", "exp", "run", "--run-all", "-j", "1", stream=True, env=env)


def _records(node: Any) -> Iterator[dict[str, Any]]:
    """Every revision of ``dvc exp show --json`` (baselines and their experiments)."""
    if isinstance(node, list):
        for item in node:
            yield from _records(item)
    elif isinstance(node, dict):
        if "data" in node and "rev" in node:
            yield node
        for key in ("experiments", "revs"):
            yield from _records(node.get(key))


def shown(names: list[str]) -> dict[str, dict[str, Any]]:
    """The params and metrics of the named experiments in ``dvc exp show --json``.

    Raises:
        SegpipeError: a name that is not there (its run failed).
    """
    found = {}
    for record in _records(json.loads(run("dvc", "exp", "show", "--json"))):
        if record.get("name") in names and record["name"] not in found:
            data = record["data"]
            params = data["params"]["params.yaml"]["data"]
            metrics = {path: m.get("data", {}) for path, m in data.get("metrics", {}).items()}
            found[record["name"]] = {"params": params, "metrics": metrics}
    missing = [name for name in names if name not in found]
    if missing:
        raise SegpipeError(f"experiments {missing} are not in `dvc exp show` (did they fail?)")
    return found


def calibrate(first: Recipe, data: list[str], threads: int) -> float:
    """Seconds of one training epoch of the first recipe, run as an experiment of its own."""
    name = f"{first[0]}-calibration"
    queue(name, [*data, *first[1], f"train.epochs={CALIBRATION_EPOCHS}"])
    run_queue(threads)
    train = shown([name])[name]["metrics"]["metrics/train/metrics.json"]
    return float(train["perf"]["epoch_seconds"])


def with_epochs(overrides: list[str], epochs: str) -> list[str]:
    """``overrides`` led by the budget's ``train.epochs=N``, unless they set it themselves."""
    own = any(o.startswith("train.epochs=") for o in overrides)
    return overrides if own else [epochs, *overrides]


def budget_epochs(budget_s: float, epoch_s: float, max_epochs: int) -> int:
    """Epochs that fit in ``budget_s`` at ``epoch_s`` each: at least 1, at most ``max_epochs``."""
    return min(max_epochs, max(1, math.floor(budget_s / epoch_s)))


def row(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """One recipe's line: epochs, training cost and test scores with their intervals."""
    train = record["metrics"].get("metrics/train/metrics.json", {})
    scores = record["metrics"].get("metrics/evaluate.json", {})
    keys = ("dice", "dice_ci95_low", "dice_ci95_high", "iou", "iou_ci95_low", "iou_ci95_high")
    return {
        "recipe": name,
        "epochs": record["params"]["train"]["epochs"],
        "best_epoch": train.get("best", {}).get("epoch"),
        "epoch_s": train.get("perf", {}).get("epoch_seconds"),
        **{key: scores[key] for key in keys},
    }


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (Dice and IoU with their 95% intervals)."""
    lines = [
        f"budget {report['budget_s']:.0f} s of training per recipe at {report['epoch_s']:.1f} s "
        f"per epoch, {report['threads']} torch thread(s)",
        "",
        "| recipe | epochs | best epoch | s per epoch | test Dice [95% CI] | test IoU [95% CI] |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['recipe']} | {r['epochs']} | {r['best_epoch']} | {r['epoch_s']} "
            f"| {_score(r, 'dice')} | {_score(r, 'iou')} |"
        )
    return "\n".join(lines)


def _score(r: dict[str, Any], name: str) -> str:
    return f"{r[name]:.3f} [{r[f'{name}_ci95_low']:.3f}, {r[f'{name}_ci95_high']:.3f}]"


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Check, calibrate (unless ``--epoch-s``), queue, run, and report every recipe."""
    table = read_yaml(args.table)
    recipes = [parse_recipe(text, table) for text in args.recipes]
    data = data_overrides(args.data, args.mask_suffix)
    check_recipes(Path(args.params), recipes, data)
    epoch_s = args.epoch_s or calibrate(recipes[0], data, args.threads)
    epochs = f"train.epochs={budget_epochs(args.budget_s, epoch_s, args.max_epochs)}"
    budgeted = [(name, [*data, *with_epochs(overrides, epochs)]) for name, overrides in recipes]
    check_recipes(Path(args.params), budgeted, [])  # the epochs fit every recipe (warm-up)
    for name, overrides in budgeted:
        queue(name, overrides)
    run_queue(args.threads)
    names = [name for name, _ in recipes]
    records = shown(names)
    rows = [row(name, records[name]) for name in names]
    report = {"budget_s": args.budget_s, "epoch_s": epoch_s, "threads": args.threads, "rows": rows}
    print(format_table(report))
    if len(names) > 1:  # the paired bootstrap against the first recipe
        report["compare"] = run(sys.executable, "-m", "segpipe", "compare", *names)
        print(report["compare"])
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``recipes`` command's options."""
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="a name of recipes.yaml or "
                   "'name: section.key=value ...'; the first is the baseline")  # fmt: skip
    p.add_argument("--budget-s", type=float, required=True, help="training seconds per recipe")
    p.add_argument("--epoch-s", type=float, default=None, help="seconds per epoch (default: "
                   "measured by a calibration experiment of the first recipe)")  # fmt: skip
    p.add_argument("--max-epochs", type=int, default=100, help="the most epochs the budget buys")
    p.add_argument("--data", type=Path, default=None, help="folder with images/ and masks/ "
                   "(default: the data of the params file)")  # fmt: skip
    p.add_argument("--mask-suffix", default="", help="masks/<stem><suffix>.<ext>")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every run (1: the "
                   "time a shared machine's load inflates least)")  # fmt: skip
    p.add_argument("--params", default="params.yaml", help="the params file the recipes change")
    p.add_argument("--table", type=Path, default=TABLE, help="the named recipes")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
