"""Training recipes compared at an equal CPU budget on one dataset folder.

    python -m benchmarks recipes --data DIR --budget-cpu-s 360 \\
        --recipe baseline --recipe 'adamw: train.optimizer=adamw train.warmup_epochs=1'

The folder (``images/`` + ``masks/``) is split once by the split stage's code (``seed`` and
``split`` of the params file), so every recipe meets the same test images. Each recipe is a set
of ``section.key=value`` overrides of the params file (values read as ``dvc exp run -S`` reads
them). Each trains with the train stage's code, stopped between epochs before its CPU time
(user + system of this process, so ``train.num_workers: 0``) would pass the budget; the best
epoch's checkpoint is kept, as always. A recipe that does not set ``train.epochs`` gets as many
epochs as the first recipe (the baseline) fitted into the budget, so its schedule (cosine,
warm-up) completes; the baseline itself runs until the budget ends it (``--max-epochs`` caps
both). The evaluate stage's code
then scores the test split at original resolution; intervals are 95% percentile bootstraps
over test images (the same resamples for every recipe: the difference to the baseline is a
paired bootstrap).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe.config import Params, parse_params, read_yaml, yaml_value
from segpipe.constants import LIVE_HISTORY
from segpipe.data import cache, split
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.metrics import SegmentationMetrics, bootstrap_scores, percentile_interval
from segpipe.training import train

log = logging.getLogger(__name__)

RESAMPLES = 1000
"""Bootstrap resamples of the test images (seeded with the params' ``seed``)."""


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``"name: section.key=value ..."`` (or a bare ``"name"``: no overrides) as the name and
    ``{dotted key: value}``; values are YAML, as ``dvc exp run -S`` reads them.

    Raises:
        SegpipeError: no name, or an override without ``=``.
    """
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise SegpipeError(f"--recipe {text!r}: expected 'name: section.key=value ...'")
    overrides = {}
    for item in shlex.split(rest):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SegpipeError(f"--recipe {name}: {item!r} is not section.key=value")
        overrides[key] = yaml_value(value)
    return name, overrides


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` with each dotted key set (the keys are checked when
    the result is loaded: an unknown one fails there, naming it).

    Raises:
        SegpipeError: a key whose section is no mapping (``train.lr.x=1``).
    """
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = out
        for i, section in enumerate(sections):
            node = node.get(section) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                where = ".".join(sections[: i + 1])
                raise SegpipeError(f"{key}: {where} is no section of the params file")
        node[leaf] = value
    return out


def recipe_params(base: dict[str, Any], overrides: dict[str, Any], epochs: int | None) -> Params:
    """The validated params of one recipe; ``epochs`` sets ``train.epochs`` unless the recipe
    does."""
    if epochs is not None and "train.epochs" not in overrides:
        overrides = {**overrides, "train.epochs": epochs}
    return parse_params(apply_overrides(base, overrides))


def paired_differences(
    baseline: np.ndarray, other: np.ndarray, first: int, *, seed: int, resamples: int = RESAMPLES
) -> dict[str, float]:
    """The paired bootstrap of ``other`` minus ``baseline`` (each (N, C, 3) per-image counts
    of the same images): the mean difference of Dice and IoU and its 95% interval."""
    draws_a, draws_b = bootstrap_scores([baseline, other], first, resamples=resamples, seed=seed)
    diffs = {name: draws_b[name] - draws_a[name] for name in draws_a}
    out = {f"{name}_diff": float(np.mean(values)) for name, values in diffs.items()}
    return {**out, **{f"{k.replace('_ci', '_diff_ci')}": v for k, v in _ci(diffs).items()}}


def _ci(draws: dict[str, np.ndarray]) -> dict[str, float]:
    return percentile_interval(draws, 0.95)


def scored_counts(splits_dir: Path, predictions_dir: Path, params: Params) -> np.ndarray:
    """The (N, C, 3) per-image counts of the predictions the evaluate code wrote, in test
    split order (the counts its scores and intervals come from)."""
    rule = load_rule(splits_dir / RULE_FILE, params.data)
    predictions = MaskRule.predictions(params.data.num_classes)
    metrics = SegmentationMetrics(
        params.data.num_classes, include_background=params.evaluate.include_background
    )
    for _, row in read_split(splits_dir / "test.csv").iterrows():
        pred = predictions.read(predictions_dir / f"{row['stem']}.png")
        truth = rule.read(Path(row["mask"]))
        metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    return np.stack(metrics.image_counts)


def epochs_run(live_dir: Path) -> int:
    """Completed epochs: rows of the validation Dice history."""
    history = live_dir / LIVE_HISTORY / "val" / "dice.tsv"
    return max(len(history.read_text().splitlines()) - 1, 0)


def run_recipe(
    name: str, params: Params, work: Path, splits_dir: Path, budget_s: float
) -> dict[str, Any]:
    """Cache (once per input geometry), train within ``budget_s`` CPU seconds, evaluate."""
    geometry = Geometry.from_train(params.train)
    t = params.train
    cache_dir = work / f"cache-{t.resize}-{t.image_size}-{t.crop}-{t.scale:g}"
    if not cache_dir.is_dir():
        rule = load_rule(splits_dir / RULE_FILE, params.data)
        cache.run(splits_dir, cache_dir, geometry, rule)
    out = work / name
    model, live = out / "model.pt", out / "live"
    cpu, wall = time.process_time(), time.perf_counter()
    train.run(params, cache_dir, model, live, None, cpu_budget_s=budget_s)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    preds = out / "predictions"
    result = evaluate.run(
        params, model, splits_dir, out / "evaluate.json", out / "per_image.csv", preds
    )
    row = {
        "recipe": name,
        "epochs": epochs_run(live),
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        **{k: result[k] for k in ("dice", "iou")},
        **{k: v for k, v in result.items() if "_ci95_" in k},
    }
    return {"row": row, "counts": scored_counts(splits_dir, preds, params)}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Split once, run every recipe, add the paired differences to the first."""
    recipes = [parse_recipe(text) for text in args.recipe]
    names = [name for name, _ in recipes]
    if len(set(names)) != len(names):
        raise SegpipeError(f"--recipe: names must be unique, got {names}")
    base = apply_overrides(
        read_yaml(Path(args.params)),
        {"data.source": "folder", "data.format": "masks", "data.path": str(args.data)}
        | {"data.mask_suffix": args.mask_suffix},
    )
    first = recipe_params(base, {}, None)
    with tempfile.TemporaryDirectory(prefix="segpipe-recipes-") as tmp:
        work = Path(tmp)
        splits_dir = work / "splits"
        d = first.data
        split.run(
            first.split, first.seed, args.data, splits_dir, d.num_classes, d.ignore_index,
            d.mask_suffix, d.mask_colours, ignore_colour=d.ignore_colour,
        )  # fmt: skip
        results, epochs = [], args.max_epochs
        for i, (name, overrides) in enumerate(recipes):
            params = recipe_params(base, overrides, epochs)
            log.info("recipe %s: %s", name, overrides or "the params file as it is")
            results.append(run_recipe(name, params, work, splits_dir, args.budget_cpu_s))
            log.info("recipe %s done: %s", name, json.dumps(results[-1]["row"]))
            if i == 0:
                row = results[0]["row"]
                per_epoch = row["train_cpu_s"] / row["epochs"]
                epochs = min(args.max_epochs, max(1, math.floor(args.budget_cpu_s / per_epoch)))
    start = 0 if first.evaluate.include_background else 1
    rows = [r["row"] for r in results]
    for r in results[1:]:
        r["row"].update(
            paired_differences(results[0]["counts"], r["counts"], start, seed=first.seed)
        )
    return {"budget_cpu_s": args.budget_cpu_s, "data": args.data.name, "rows": rows}


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (Dice and IoU with their 95% intervals)."""
    lines = [
        f"data: {report['data']}; CPU budget per recipe: {report['budget_cpu_s']:.0f} s of "
        f"training, {report.get('threads', '?')} torch thread(s)",
        "",
        "| recipe | epochs | train wall s | train CPU s | test Dice [95% CI] | test IoU [95% CI] "
        "| Dice vs first [95% CI] |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in report["rows"]:
        diff = _difference(r) if "dice_diff" in r else "-"
        lines.append(
            f"| {r['recipe']} | {r['epochs']} | {r['train_wall_s']:.0f} | {r['train_cpu_s']:.0f} "
            f"| {_score(r, 'dice')} | {_score(r, 'iou')} | {diff} |"
        )
    return "\n".join(lines)


def _difference(row: dict[str, Any]) -> str:
    low, high = row["dice_diff_ci95_low"], row["dice_diff_ci95_high"]
    return f"{row['dice_diff']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _score(row: dict[str, Any], name: str) -> str:
    low, high = row[f"{name}_ci95_low"], row[f"{name}_ci95_high"]
    return f"{row[name]:.3f} [{low:.3f}, {high:.3f}]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``recipes`` mode's options."""
    p.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/")
    p.add_argument("--mask-suffix", default="", help="masks/<stem><suffix>.<ext>")
    p.add_argument(
        "--budget-cpu-s", type=float, required=True, help="training CPU seconds per recipe"
    )
    p.add_argument(
        "--recipe",
        action="append",
        required=True,
        help="'name: section.key=value ...' (repeat; the first is the baseline)",
    )
    p.add_argument(
        "--max-epochs", type=int, default=100, help="train.epochs of the first recipe (the "
        "budget stops it sooner), and the most any recipe gets",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: CPU time that contention on "
        "a shared machine does not inflate; more threads spin while they wait for each other)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


def main(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:  # put the process's thread count back: a caller's later training must not change
        report = compare(args)
    finally:
        torch.set_num_threads(threads)
    report["threads"] = args.threads
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
