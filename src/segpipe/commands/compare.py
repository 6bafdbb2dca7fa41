"""``segpipe compare A B [C ...]``: each run against the first, with paired bootstrap intervals
and verdicts (see :mod:`segpipe.evaluation.compare` and docs/compare.md).

Each argument is a git revision, a tag, a DVC experiment name or ``workspace``; its files are
read through DVC at that revision, with no checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from segpipe.cli import run_stage
from segpipe.config import yaml_value
from segpipe.errors import SegpipeError
from segpipe.evaluation import fingerprint, folds
from segpipe.evaluation.compare import (
    LEVEL,
    Comparison,
    Group,
    Revision,
    Run,
    compare,
    environment_note,
)
from segpipe.metrics import count_columns, counts_of_table

log = logging.getLogger(__name__)

WORKSPACE = "workspace"

PER_IMAGE, TEST_SET, PARAMS = "metrics/per_image.csv", "metrics/test_set.json", "params.yaml"
ENVIRONMENT = "metrics/environment.json"
"""What compare reads at each revision, where dvc.yaml's evaluate stage writes it (the gallery
also reads images, masks and predictions: :mod:`segpipe.reporting.gallery`)."""
TRAIN_METRICS = "metrics/train/metrics.json"
"""``--folds`` also reads ``best.val_dice`` there, each fold's validation score (train stage)."""

RERUN = "run its evaluate stage again (`dvc exp run` or `dvc repro` at that revision) to compare it"


def flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested params as ``section.key`` values (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve(repo: Any, name: str) -> str | None:
    """The commit of a git revision, tag or experiment name (as DVC resolves them); None for
    the workspace."""
    from dvc.scm import RevError, resolve_rev

    if name == WORKSPACE:
        return None
    try:
        return resolve_rev(repo.scm, name)
    except RevError:
        raise SegpipeError(
            f"{name}: no such git revision, tag or experiment (`dvc exp show` lists the "
            f"experiments; `{WORKSPACE}` is the working tree)"
        ) from None


def _read(fs: Any, name: str, path: str, what: str) -> str:
    try:
        return fs.read_text(path, encoding="utf-8")
    except FileNotFoundError:
        raise SegpipeError(f"{name}: no {path} at this revision ({what}); {RERUN}") from None


def read_revision(root: Path, repo: Any, name: str) -> Revision:
    """Read one argument's params, per-image table and test-set fingerprint."""
    from dvc.api import DVCFileSystem

    rev = resolve(repo, name)
    fs = DVCFileSystem(repo=str(root), rev=rev)
    raw = yaml_value(_read(fs, name, PARAMS, "the run's parameters"))
    params = flatten(raw if isinstance(raw, Mapping) else {})
    table = pd.read_csv(io.StringIO(_read(fs, name, PER_IMAGE, "its per-image scores")))
    table["stem"] = table["stem"].astype(str)
    test_set = json.loads(_read(fs, name, TEST_SET, "the test-set fingerprint"))
    try:
        environment = json.loads(fs.read_text(ENVIRONMENT, encoding="utf-8")).get("train")
    except FileNotFoundError:
        environment = None  # evaluated before segpipe recorded it
    revision = Revision(name, rev, params, table, test_set, environment)
    missing = [c for c in count_columns(revision.classes) if c not in table.columns]
    if missing:
        raise SegpipeError(
            f"{name}: {PER_IMAGE} has no per-image counts ({missing[0]} ...): it was evaluated "
            f"before segpipe wrote them; {RERUN}"
        )
    return revision


def read_val_dice(root: Path, revision: Revision) -> float | None:
    """``best.val_dice`` of the run's training record; None where it has none (trained before
    segpipe recorded it)."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(repo=str(root), rev=revision.rev)
    try:
        record = json.loads(fs.read_text(TRAIN_METRICS, encoding="utf-8"))
    except FileNotFoundError:
        return None
    best = record.get("best") if isinstance(record, dict) else None
    value = best.get("val_dice") if isinstance(best, dict) else None
    return float(value) if isinstance(value, int | float) else None


def check_same_test_set(base: Revision, other: Revision) -> None:
    """Refuse two runs scored on different test images, or with different classes."""
    difference = fingerprint.difference(base.test_set, other.test_set)
    if difference:
        raise SegpipeError(
            f"{other.name} was scored on other test images than {base.name} ({difference} of "
            f"{base.test_set['n_images']}): compare runs evaluated on the same test set"
        )
    for key in ("data.classes", "evaluate.include_background"):
        if base.params.get(key) != other.params.get(key):
            raise SegpipeError(
                f"{other.name} has {key} {other.params.get(key)}, {base.name} "
                f"{base.params.get(key)}: their scores are not comparable"
            )


def aligned_runs(revisions: Sequence[Revision]) -> list[Run]:
    """The runs with their per-image counts in the first run's image order."""
    order = revisions[0].table["stem"]
    runs = []
    for revision in revisions:
        table = revision.table.set_index("stem", drop=False).reindex(order)
        if table["stem"].isna().any() or len(revision.table) != len(order):
            raise SegpipeError(
                f"{revision.name}: {PER_IMAGE} does not list the fingerprinted stems"
            )
        counts = counts_of_table(table, revision.classes)
        runs.append(Run(revision.name, counts, revision.params))
    return runs


def _number(value: float | None, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _spread(group: Group, metric: str) -> str:
    s = group.scores[metric]
    if len(group.members) == 1:
        return "one run"
    return f"{len(group.members)} seeds: {_number(s.min)}..{_number(s.max)}, sd {_number(s.sd)}"


def render(groups: list[Group], comparisons: list[Comparison], header: str) -> str:
    """The text report: per comparison, one line per metric."""
    lines = [header, ""]
    for group in groups:
        if len(group.members) > 1:
            seeds = ", ".join(" ".join(f"{k}={v}" for k, v in s.items()) for s in group.seeds)
            lines.append(f"group {group.name}: {len(group.members)} runs ({seeds})")
    by_name = {g.name: g for g in groups}
    for c in comparisons:
        pct = int(round(LEVEL * 100))
        lines += [
            "",
            f"{c.other} vs {c.baseline}",
            f"  {'metric':<16}{'baseline':>9}{'other':>9}{'diff':>9}  {pct}% interval"
            f"{'':<9}{'verdict (Holm p)':<30}seed spread (baseline | other)",
        ]
        for d in c.metrics:
            interval = f"[{_number(d.low, True)}, {_number(d.high, True)}]"
            spread = (
                f"{_spread(by_name[c.baseline], d.metric)} | {_spread(by_name[c.other], d.metric)}"
            )
            lines.append(
                f"  {d.metric:<16}{_number(d.baseline):>9}{_number(d.other):>9}"
                f"{_number(d.difference, True):>9}  {interval:<20}"
                f"{d.verdict + f' ({d.p_holm:.3f})':<30}{spread}"
            )
        sizes = sorted(len(by_name[name].members) for name in (c.baseline, c.other))
        if sizes[0] == 1 and sizes[1] > 1:
            lines.append(
                "  note: one side is a single run, whose own seed noise is not in the interval: "
                "queue the same seeds for it (-S seed=...)"
            )
    return "\n".join(lines)


def render_folds(summary: folds.FoldSummary, header: str) -> str:
    """The cross-validation table: a line per fold, then the mean and sd over the folds."""
    metrics = list(summary.mean)
    width = max(12, *(len(f.name) + 2 for f in summary.folds))
    head = "".join(f"{m:>{max(10, len(m) + 2)}}" for m in metrics)
    lines = [header, "", f"{'fold':<6}{'run':<{width}}{head}"]

    def row(label: str, name: str, scores: Mapping[str, float | None]) -> str:
        cells = "".join(f"{_number(scores[m]):>{max(10, len(m) + 2)}}" for m in metrics)
        return f"{label:<6}{name:<{width}}{cells}"

    lines += [row(str(f.fold), f.name, f.scores) for f in summary.folds]
    lines += [row("mean", "", summary.mean), row("sd", "", summary.sd)]
    return "\n".join(lines)


def folds_json(revisions: Sequence[Revision], summary: folds.FoldSummary) -> str:
    revs = {r.name: r.rev for r in revisions}
    record = {
        "test_set": {k: revisions[0].test_set[k] for k in ("n_images", "sha256")},
        "folds": [{**dataclasses.asdict(f), "rev": revs[f.name]} for f in summary.folds],
        "mean": summary.mean,
        "sd": summary.sd,
    }
    return json.dumps(_json_ready(record), indent=2)


def _json_ready(value: Any) -> Any:
    """NaN becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def as_json(
    revisions: Sequence[Revision], groups: list[Group], comparisons: list[Comparison], method: dict
) -> str:
    record = {
        "test_set": {k: revisions[0].test_set[k] for k in ("n_images", "sha256")},
        "method": method,
        "runs": [{"name": r.name, "rev": r.rev} for r in revisions],
        "groups": [dataclasses.asdict(g) for g in groups],
        "comparisons": [dataclasses.asdict(c) for c in comparisons],
        "environments": {r.name: r.environment for r in revisions},
    }
    return json.dumps(_json_ready(record), indent=2)


def run(args: argparse.Namespace) -> int:
    """Read every argument, check their test sets, compare, print, draw the gallery."""
    from dvc.repo import Repo

    root = Path(args.repo)
    try:
        repo = Repo(str(root))
    except Exception as e:  # noqa: BLE001 - DVC's own errors name the problem
        raise SegpipeError(f"{root}: not a DVC repository ({e})") from None
    with repo:
        revisions = [read_revision(root, repo, name) for name in args.revisions]
    if args.folds:
        return report_folds(root, revisions, as_json=args.json)
    for other in revisions[1:]:
        check_same_test_set(revisions[0], other)
    classes = revisions[0].classes
    runs = aligned_runs(revisions)
    groups, comparisons = compare(
        runs,
        revisions[0].first,
        classes if len(classes) > 2 else None,
        by_seed=not args.no_groups,
        resamples=args.resamples,
        seed=args.seed,
    )
    method = {
        "bootstrap": "paired over test images; seeds resampled within groups",
        "resamples": args.resamples,
        "seed": args.seed,
        "level": LEVEL,
        "correction": f"Holm over the {len(comparisons)} comparison(s), per metric",
    }
    if args.json:
        print(as_json(revisions, groups, comparisons, method))
    else:
        header = (
            f"{revisions[0].test_set['n_images']} test images, fingerprint "
            f"{revisions[0].test_set['sha256'][:12]} in every run; paired bootstrap "
            f"({args.resamples} resamples, seed {args.seed}), Holm over {len(comparisons)} "
            f"comparison(s)\n{environment_note(revisions)}"
        )
        print(render(groups, comparisons, header))
    if args.gallery is not None:
        from segpipe.reporting import gallery

        with tempfile.TemporaryDirectory() as tmp:
            gallery.write_all(root, revisions, groups, args.gallery, args.gallery_size, Path(tmp))
    return 0


def report_folds(root: Path, revisions: Sequence[Revision], *, as_json: bool) -> int:
    """``--folds``: check that the runs are the folds of one run, scored on one test set, and
    print their summary (:mod:`segpipe.evaluation.folds`)."""
    folds.fold_order(revisions)  # before the test sets: the clearer error
    for other in revisions[1:]:
        check_same_test_set(revisions[0], other)
    classes = revisions[0].classes
    summary = folds.summarize(
        aligned_runs(revisions),
        [read_val_dice(root, r) for r in revisions],
        revisions[0].first,
        classes if len(classes) > 2 else None,
    )
    if as_json:
        print(folds_json(revisions, summary))
        return 0
    test = revisions[0].test_set
    header = (
        f"{len(revisions)} folds of one run, each scored on the same {test['n_images']} test "
        f"images (fingerprint {test['sha256'][:12]}); {folds.VAL}: the best epoch's Dice on "
        f"the fold's own validation split, the others on the test set\n"
        f"{environment_note(revisions)}"
    )
    print(render_folds(summary, header))
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Compare evaluated runs with the first: Dice, IoU (and each class's Dice when "
            "multi-class), the difference, its paired 95% bootstrap interval over the same "
            "test images, and a verdict (better, worse, no clear difference) from the "
            "Holm-adjusted p-value over the runs compared (per metric). Runs whose params "
            "differ only in seed form a group: its score is the mean over "
            "its seeds, which are resampled too, and the spread between them is shown. Runs "
            "scored on different test images are refused (exit 1). Method: docs/compare.md."
        ),
    )
    p.add_argument(
        "revisions",
        nargs="+",
        metavar="REV",
        help=f"git revision, tag, experiment name or {WORKSPACE}; the first is the baseline",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--gallery",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the images whose Dice changed most, and a per-image Dice scatter",
    )
    p.add_argument(
        "--gallery-size",
        type=int,
        default=4,
        metavar="N",
        help="regressions and gains each in the gallery (default: %(default)s)",
    )
    p.add_argument("--no-groups", action="store_true", help="compare every run on its own")
    p.add_argument(
        "--folds",
        action="store_true",
        help="the runs are the folds of one cross-validation (they differ in split.fold "
        "alone): report each fold's validation and test scores, with mean and sd",
    )
    p.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap draws (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--repo", default=".", help="the repository (default: the current folder)")
    p.add_argument("--verbose", action="store_true", help="show full tracebacks")
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command on ``argv`` (default: the process's arguments); returns the exit code."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    if len(args.revisions) < 2:
        p.error("give at least two runs: the baseline, then the runs to compare with it")
    if args.resamples < 100:
        p.error("--resamples: at least 100")
    if args.gallery_size < 1:
        p.error("--gallery-size: at least 1")
    if args.folds and (args.gallery is not None or args.no_groups):
        p.error("--folds: summarises the folds, with no --gallery or --no-groups")
    return run_stage(lambda: run(args), verbose=args.verbose)
