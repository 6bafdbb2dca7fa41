"""The plot stage: the image | prediction | ground truth grid, the worst test images with their
errors coloured, the per-image Dice histogram, and the training curves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from segpipe.config import PlotConfig  # noqa: E402
from segpipe.constants import IGNORE, LIVE_HISTORY
from segpipe.data.colours import blend, colourize  # noqa: E402
from segpipe.data.images import read_image  # noqa: E402
from segpipe.data.masks import MaskRule  # noqa: E402
from segpipe.data.tables import (  # noqa: E402
    dataset_folder,
    read_split,
    read_table,
)
from segpipe.errors import SegpipeError  # noqa: E402
from segpipe.files import atomic_write, require_apart  # noqa: E402
from segpipe.progress import progress  # noqa: E402

log = logging.getLogger(__name__)

CURVES = {
    "loss": ("train/loss", "val/loss"),
    "dice": ("val/dice",),
    "iou": ("val/iou",),
    "pixel accuracy": ("val/pixel_accuracy",),
}


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


ERROR_COLOURS = {"TP": (44, 160, 44), "FP": (214, 39, 40), "FN": (31, 119, 180)}


def _read_prediction(path: Path, num_classes: int) -> np.ndarray:
    if not path.exists():
        raise SegpipeError(f"{path}: prediction not found (run the evaluate stage first)")
    return MaskRule.predictions(num_classes).read(path)


def error_overlay(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.55
) -> np.ndarray:
    """The image tinted by outcome: TP green (right foreground class), FP red (foreground
    predicted where the truth is background or another class), FN blue (foreground predicted
    as background). Background hits and ignored pixels stay untinted."""
    valid = truth != IGNORE
    outcome = {
        "TP": valid & (truth > 0) & (pred == truth),
        "FP": valid & (pred > 0) & (pred != truth),
        "FN": valid & (truth > 0) & (pred == 0),
    }
    out = image.astype(np.float32)
    for name, where in outcome.items():
        blend(out, where, ERROR_COLOURS[name], alpha)
    return out.clip(0, 255).astype(np.uint8)


def prediction_grid(
    test_csv: Path,
    predictions_dir: Path,
    n_samples: int,
    out_path: Path,
    rule: MaskRule,
) -> int:
    """Draw the first ``n_samples`` test images: image | prediction | ground truth (read by
    the split stage's mask ``rule``).

    Returns:
        The number of rows drawn.
    """
    num_classes = rule.num_classes
    frame = read_split(test_csv).head(n_samples)
    fig, axes = plt.subplots(len(frame), 3, figsize=(9, 3 * len(frame)), squeeze=False)
    rows = progress(frame.iterrows(), "plot predictions", total=len(frame), unit="image")
    for row, (_, item) in zip(axes, rows, strict=True):
        pred = _read_prediction(predictions_dir / f"{item['stem']}.png", num_classes)
        truth = rule.read(Path(item["mask"]))
        panels = (
            read_image(Path(item["image"])),
            colourize(pred, num_classes),
            colourize(truth, num_classes),
        )
        for ax, panel, title in zip(
            row, panels, ("image", "prediction", "ground truth"), strict=True
        ):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(f"{title}: {item['stem']}" if title == "image" else title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    _save(fig, out_path)
    return len(frame)


def worst_gallery(
    per_image_csv: Path,
    predictions_dir: Path,
    n_worst: int,
    out_path: Path,
    rule: MaskRule,
) -> list[str]:
    """The ``n_worst`` test images by per-image Dice: image | ground truth (read by ``rule``) |
    prediction | TP/FP/FN overlay. Returns their stems, worst first."""
    num_classes = rule.num_classes
    frame = _read_per_image(per_image_csv)
    worst = frame.sort_values(["dice", "stem"], kind="stable").head(n_worst)
    fig, axes = plt.subplots(len(worst), 4, figsize=(12, 3 * len(worst)), squeeze=False)
    rows = progress(worst.iterrows(), "plot worst", total=len(worst), unit="image")
    for row, (_, item) in zip(axes, rows, strict=True):
        image = read_image(Path(item["image"]))
        truth = rule.read(Path(item["mask"]))
        pred = _read_prediction(predictions_dir / f"{item['stem']}.png", num_classes)
        panels = (
            (image, f"{item['stem']}: Dice {item['dice']:.3f}"),
            (colourize(truth, num_classes), "ground truth"),
            (colourize(pred, num_classes), "prediction"),
            (error_overlay(image, truth, pred), "TP green, FP red, FN blue"),
        )
        draw_row(row, panels)
    fig.tight_layout()
    _save(fig, out_path)
    return worst["stem"].tolist()


def draw_row(row: Any, panels: Sequence[tuple[np.ndarray, str]]) -> None:
    """One row of a gallery: each (image, title) panel in its axes, without ticks."""
    for ax, (panel, title) in zip(row, panels, strict=True):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def dice_histogram(per_image_csv: Path, out_path: Path) -> None:
    """Histogram of per-image Dice over the test images, with its mean."""
    dice = _read_per_image(per_image_csv)["dice"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="#1f77b4", edgecolor="white")
    ax.axvline(dice.mean(), color="#d62728", linestyle="--", label=f"mean {dice.mean():.3f}")
    ax.set_xlabel("per-image Dice")
    ax.set_ylabel("test images")
    ax.set_title(f"Per-image Dice over {len(dice)} test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_path)


def _read_per_image(path: Path) -> pd.DataFrame:
    return read_table(
        path, ("stem", "image", "mask", "dice"), "per-image scores", "run the evaluate stage"
    )


def training_curves(live_dir: Path, out_path: Path) -> None:
    """Plot the per-epoch history that DVCLive wrote under ``live_dir`` (see
    :data:`~segpipe.constants.LIVE_HISTORY`)."""
    metrics_dir = live_dir / LIVE_HISTORY
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2), squeeze=False)
    for ax, (title, names) in zip(axes[0], CURVES.items(), strict=True):
        for name in names:
            path = metrics_dir / f"{name}.tsv"
            if not path.exists():
                raise SegpipeError(f"{path}: training history not found (run the train stage)")
            history = pd.read_csv(path, sep="\t")
            ax.plot(history["step"] + 1, history[name.split("/")[-1]], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out_path)


def run(
    cfg: PlotConfig,
    test_csv: Path,
    per_image_csv: Path,
    predictions_dir: Path,
    live_dir: Path,
    out_dir: Path,
    rule: MaskRule,
) -> None:
    """Write ``predictions.png``, ``worst.png``, ``dice_histogram.png`` and
    ``training_curves.png`` to ``out_dir``; ground-truth masks are read by the split stage's
    ``rule`` (see :func:`~segpipe.data.masks.load_rule`)."""
    inputs = {
        "--test": test_csv,
        "--per-image": per_image_csv,
        "--predictions": predictions_dir,
        "--live": live_dir,
        "the dataset": dataset_folder(read_split(test_csv)),
    }
    require_apart(out_dir, "--out", inputs)
    drawn = prediction_grid(
        test_csv, predictions_dir, cfg.n_samples, out_dir / "predictions.png", rule
    )
    worst = worst_gallery(per_image_csv, predictions_dir, cfg.n_worst, out_dir / "worst.png", rule)
    dice_histogram(per_image_csv, out_dir / "dice_histogram.png")
    training_curves(live_dir, out_dir / "training_curves.png")
    log.info(
        "plotted %d test images, the %d worst (%s), the per-image Dice histogram and the "
        "training curves to %s",
        drawn,
        len(worst),
        ", ".join(worst),
        out_dir,
    )
