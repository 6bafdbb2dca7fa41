"""The model card written by the evaluate stage: what was trained on what, how well, how fast,
and the exact command that reproduces it."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segpipe.config import Params, to_dict
from segpipe.files import atomic_write
from segpipe.model.checkpoint import Checkpoint
from segpipe.runtime import Environment


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def reproduce_command(params: Params) -> str:
    """``git checkout <commit> && dvc exp run -S key=value ...`` with every parameter set."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "<commit>"
    sets = " ".join(
        "-S "
        + shlex.quote(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}").replace(
            "\n...", ""
        )
        for key, value in _leaves(to_dict(params))
    )
    return f"git checkout {commit} && dvc exp run {sets}"


def write(
    path: Path,
    params: Params,
    metrics: dict[str, float],
    checkpoint: Checkpoint,
    split_counts: dict[str, int],
    eval_images_per_s: float,
    confusion: np.ndarray | None = None,
    environments: dict[str, Environment | None] | None = None,
    *,
    members: list[tuple[Path, Checkpoint]] | None = None,
) -> None:
    """Write the card as markdown, atomically. ``confusion``: test pixel counts (C, C), rows
    the true class; ``environments``: where each step ran (``train``, ``evaluate``);
    ``members``: the checkpoints scored, listed when ``evaluate.ensemble`` is set."""
    classes = list(checkpoint.model_config.classes)
    lines = [
        *_model_section(params, checkpoint),
        *(_ensemble_section(members) if members and params.evaluate.ensemble else []),
        *_data_section(params, split_counts),
        *_metrics_section(params, metrics, classes),
        *_per_class_table(metrics, classes),
        *(_confusion_table(confusion, classes) if confusion is not None else []),
        "",
        "## Cost",
        f"- Training: {checkpoint.train_images_per_s:.1f} images/s "
        f"({params.train.precision} precision, channels-last {params.train.channels_last}).",
        f"- Evaluation: {eval_images_per_s:.1f} images/s, including decoding and resizing back.",
        "",
        *(_environment_section(environments) if environments else []),
        "## Parameters",
        "```yaml",
        yaml.safe_dump(to_dict(params), sort_keys=False).rstrip(),
        "```",
        "",
        "## Reproduce",
        "```bash",
        reproduce_command(params),
        "```",
        "",
    ]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))


def _environment_section(environments: dict[str, Environment | None]) -> list[str]:
    """Where each step ran, and what a rerun may differ by (docs/experiments.md,
    Reproducibility)."""
    steps = list(environments)
    fields = [f.name for f in dataclasses.fields(Environment)]
    rows = [
        f"| {name} | "
        + " | ".join(
            str(getattr(env, name)) if env is not None else "not recorded"
            for env in environments.values()
        )
        + " |"
        for name in fields
    ]
    return [
        "## Environment",
        "| | " + " | ".join(steps) + " |",
        "|---|" + "---|" * len(steps),
        *rows,
        "",
        "A rerun with the same code, data, params and environment (all rows equal, "
        "`metrics/environment.json`) gives bit-identical weights and metrics. On another CPU "
        "model, ISA, library version, thread count or precision the arithmetic rounds "
        "differently, and the results move within the spread between training seeds "
        "(`segpipe compare`, BENCHMARKS.md).",
        "",
    ]


def _model_section(params: Params, checkpoint: Checkpoint) -> list[str]:
    config = checkpoint.model_config
    return [
        f"# Model card: {config.arch} / {config.encoder}",
        "",
        "## Model",
        f"- Architecture `{config.arch}`, encoder `{config.encoder}` "
        f"(initial weights: {params.model.encoder_weights or 'random'}), "
        f"input {config.geometry.describe()}, "
        f"classes {', '.join(config.classes)}.",
        f"- Best epoch {checkpoint.epoch} of {params.train.epochs} by validation Dice "
        f"({checkpoint.val_dice:.4f}, at the model's input size).",
        "",
    ]


def _ensemble_section(members: list[tuple[Path, Checkpoint]]) -> list[str]:
    """The members of the ensemble scored (``evaluate.ensemble``); the model above is the
    first's."""
    rows = [
        f"| `{path.as_posix()}` | {c.model_config.arch} / {c.model_config.encoder} | {c.epoch} "
        f"| {c.val_dice:.4f} |"
        for path, c in members
    ]
    return [
        "## Ensemble",
        f"Scored: the ensemble of {len(members)} checkpoint(s) (`evaluate.ensemble`), their "
        "class probabilities averaged; the model above is the first.",
        "",
        "| checkpoint | model | best epoch | validation Dice |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _data_section(params: Params, split_counts: dict[str, int]) -> list[str]:
    d = params.data
    source = {
        "synthetic": (
            f"built-in synthetic data ({d.synthetic.n_images} images, seed {d.synthetic.seed})"
        ),
        "folder": f"image folder `{d.path}`",
        "kaggle": f"Kaggle dataset `{d.kaggle_dataset}`",
    }[d.source]
    if d.source != "synthetic" and d.format != "masks":
        source += {"coco": " (a COCO export)", "voc": " (a Pascal VOC tree)"}[d.format]
    return [
        "## Data",
        f"- Source: {source}.",
        f"- Splits (seed {params.split.seed}): train {split_counts['train']}, "
        f"val {split_counts['val']}, test {split_counts['test']} images.",
        "",
    ]


def _metrics_section(params: Params, m: dict[str, float], classes: list[str]) -> list[str]:
    """The headline metrics with their intervals, what they average, and the sweep's note."""
    rows = [
        ("Dice (dataset-level)", m["dice"], m.get("dice_ci95_low"), m.get("dice_ci95_high")),
        ("IoU (dataset-level)", m["iou"], m.get("iou_ci95_low"), m.get("iou_ci95_high")),
        ("Precision (dataset-level)", m["precision"], None, None),
        ("Recall (dataset-level)", m["recall"], None, None),
        ("Pixel accuracy", m["pixel_accuracy"], None, None),
        ("Dice (mean per image)", m["dice_per_image"], None, None),
        ("IoU (mean per image)", m["iou_per_image"], None, None),
        ("HD95, pixels (mean over images)", m["hd95"], None, None),
        (f"NSD at {m['boundary_tolerance']:g} px (mean over images)", m["nsd"], None, None),
    ]
    decision = f"threshold {m['threshold']}" if len(classes) == 2 else "argmax over the classes"
    averaged = "all classes" if params.evaluate.include_background else "the foreground classes"
    threshold_note = (
        [
            "",
            f"Threshold sweep on the validation split: the best threshold is "
            f"{m['val_best_threshold']} (validation Dice {m['val_best_threshold_dice']:.4f}); "
            f"the test scores above use the configured {m['threshold']}.",
        ]
        if "val_best_threshold" in m
        else []
    )
    return [
        "## Test metrics",
        f"Scored at each image's original resolution, {decision}, over "
        f"{m['n_images']} test images; 95% intervals by bootstrap over test images.",
        "",
        "| metric | value | 95% interval |",
        "|---|---:|---:|",
        *(
            f"| {name} | {_number(value)} | {_interval(low, high)} |"
            for name, value, low, high in rows
        ),
        "",
        f"Means are over {averaged} (`evaluate.include_background: "
        f"{str(params.evaluate.include_background).lower()}`). HD95 and NSD: foreground "
        f"classes, at original resolution; {m['hd95_n_infinite']} (image, class) pairs with the "
        "class in only one of truth and prediction have no finite HD95 and are left out of its "
        "mean (docs/pipeline.md, Metrics).",
        *threshold_note,
        *_postprocess_note(m, classes),
    ]


def _postprocess_note(m: dict[str, Any], classes: list[str]) -> list[str]:
    """What ``evaluate.postprocess: auto`` chose on the validation split, and what it did."""
    if "dice_without_postprocess" not in m:
        return []
    rules = ", ".join(f"{c}: {m[f'postprocess/{c}']}" for c in classes[1:])
    return [
        "",
        f"Post-processing chosen on the validation split ({rules}; validation Dice "
        f"{_number(m['val_dice_without_postprocess'])} without, "
        f"{_number(m['val_dice_with_postprocess'])} with): the test scores above are "
        f"post-processed; without it, Dice {_number(m['dice_without_postprocess'])}.",
    ]


def _per_class_table(m: dict[str, float], classes: list[str]) -> list[str]:
    return [
        "",
        "### Per class (dataset level; n/a: class absent from truth and prediction)",
        "",
        "HD95 and NSD: means over images (foreground classes only).",
        "",
        "| class | Dice | IoU | precision | recall | HD95 (px) | NSD |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {c} | {_number(m.get(f'dice/{c}'))} | {_number(m.get(f'iou/{c}'))} | "
            f"{_number(m.get(f'precision/{c}'))} | {_number(m.get(f'recall/{c}'))} | "
            f"{_number(m.get(f'hd95/{c}'), '.2f')} | {_number(m.get(f'nsd/{c}'))} |"
            for c in classes
        ),
    ]


def _confusion_table(confusion: np.ndarray, classes: list[str]) -> list[str]:
    return [
        "",
        "### Confusion matrix (test pixels; rows: truth, columns: prediction)",
        "",
        "| truth \\ prediction | " + " | ".join(classes) + " |",
        "|---|" + "---:|" * len(classes),
        *(
            f"| {c} | " + " | ".join(str(int(v)) for v in row) + " |"
            for c, row in zip(classes, confusion, strict=True)
        ),
    ]


def _interval(low: float | None, high: float | None) -> str:
    return f"{low:.4f} - {high:.4f}" if low is not None and high is not None else ""


def _number(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)
