"""``segpipe compare --gallery DIR``: what changed, image by image, between two runs.

For each run compared with the baseline (a group's first member stands for its group), writes
``DIR/<run>/changes.png``, the test images whose per-image Dice fell most and rose most, each as
image | truth | baseline | run, and ``DIR/<run>/scatter.png``, per-image Dice of the run
against the baseline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from segpipe.data.colours import colourize  # noqa: E402
from segpipe.data.images import read_image  # noqa: E402
from segpipe.data.masks import MaskRule, load_rule  # noqa: E402
from segpipe.evaluation.compare import Group, Revision  # noqa: E402
from segpipe.reporting.plot import _save, draw_row  # noqa: E402

log = logging.getLogger(__name__)

PREDICTIONS, MASK_RULE = "data/predictions", "data/splits/mask_rule.json"
"""Where dvc.yaml's evaluate stage writes the predicted masks, and split the mask rule."""


def safe_name(name: str) -> str:
    """A run's name as a folder name (``HEAD~1`` -> ``HEAD_1``)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def changes(base: pd.DataFrame, other: pd.DataFrame, size: int) -> pd.DataFrame:
    """The ``size`` images whose per-image Dice fell most, then the ``size`` that rose most
    (only those that changed), with columns stem, image, mask, dice_base, dice_other, change."""
    merged = base[["stem", "image", "mask", "dice"]].merge(
        other[["stem", "dice"]], on="stem", suffixes=("_base", "_other")
    )
    merged["change"] = merged["dice_other"] - merged["dice_base"]
    ranked = merged.sort_values(["change", "stem"], kind="stable")
    worst = ranked[ranked["change"] < 0].head(size)
    best = ranked[ranked["change"] > 0].iloc[::-1].head(size)
    return pd.concat([worst, best], ignore_index=True)


class RevisionFiles:
    """Files of one revision copied out of DVC into a local folder, as compare reads them."""

    def __init__(self, root: Path, rev: str | None, local: Path) -> None:
        from dvc.api import DVCFileSystem

        self.fs = DVCFileSystem(repo=str(root), rev=rev)
        self.local = local

    def get(self, path: str) -> Path:
        """A local copy of ``path`` (a path outside the repository is read where it is)."""
        if Path(path).is_absolute():
            return Path(path)
        target = self.local / path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))
        return target


def draw_changes(
    rows: pd.DataFrame,
    panels: Sequence[tuple[np.ndarray, ...]],
    names: tuple[str, str],
    num_classes: int,
    out_path: Path,
) -> None:
    """One row per image: image | truth | baseline's prediction | the run's prediction."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for row, (_, item), (image, truth, pred_base, pred_other) in zip(
        axes, rows.iterrows(), panels, strict=True
    ):
        titled = (
            (image, f"{item['stem']}: Dice {item['change']:+.3f}"),
            (colourize(truth, num_classes), "ground truth"),
            (colourize(pred_base, num_classes), f"{names[0]}: {item['dice_base']:.3f}"),
            (colourize(pred_other, num_classes), f"{names[1]}: {item['dice_other']:.3f}"),
        )
        draw_row(row, titled)
    fig.tight_layout()
    _save(fig, out_path)


def draw_scatter(
    base: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str], out: Path
) -> None:
    """Per-image Dice of the run (y) against the baseline (x), with the diagonal."""
    merged = base[["stem", "dice"]].merge(other[["stem", "dice"]], on="stem")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=1, linestyle="--")
    ax.scatter(merged["dice_x"], merged["dice_y"], s=14, alpha=0.7, color="#1f77b4")
    ax.set_xlabel(f"per-image Dice, {names[0]}")
    ax.set_ylabel(f"per-image Dice, {names[1]}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    above = int((merged["dice_y"] > merged["dice_x"]).sum())
    below = int((merged["dice_y"] < merged["dice_x"]).sum())
    ax.set_title(f"{len(merged)} test images: {above} up, {below} down", fontsize=9)
    fig.tight_layout()
    _save(fig, out)


def write_one(
    root: Path, base: Revision, other: Revision, out_dir: Path, size: int, tmp: Path
) -> None:
    """The gallery and scatter of ``other`` against ``base``."""
    names = (base.name, other.name)
    num_classes = len(base.classes)
    base_files = RevisionFiles(root, base.rev, tmp / "base")
    other_files = RevisionFiles(root, other.rev, tmp / safe_name(other.name))
    draw_scatter(base.table, other.table, names, out_dir / "scatter.png")
    rows = changes(base.table, other.table, size)
    if rows.empty:
        log.info("%s: no test image's Dice changed against %s", other.name, base.name)
        return
    rule = load_rule(base_files.get(MASK_RULE))
    read_prediction = MaskRule.predictions(num_classes).read
    panels = []
    for _, item in rows.iterrows():
        prediction = f"{PREDICTIONS}/{item['stem']}.png"
        panels.append(
            (
                read_image(base_files.get(item["image"])),
                rule.read(base_files.get(item["mask"])),
                read_prediction(base_files.get(prediction)),
                read_prediction(other_files.get(prediction)),
            )
        )
    draw_changes(rows, panels, names, num_classes, out_dir / "changes.png")
    log.info("%s: %d changed images and the Dice scatter in %s", other.name, len(rows), out_dir)


def write_all(
    root: Path,
    revisions: Sequence[Revision],
    groups: Sequence[Group],
    out_dir: Path,
    size: int,
    tmp: Path,
) -> None:
    """:func:`write_one` for each group after the first, by its first member."""
    by_name = {r.name: r for r in revisions}
    base = by_name[groups[0].members[0]]
    for group in groups[1:]:
        other = by_name[group.members[0]]
        write_one(root, base, other, out_dir / safe_name(other.name), size, tmp)
