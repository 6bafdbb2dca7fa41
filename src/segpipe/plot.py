"""The plot stage: a picture grid of image | prediction | ground truth, and training curves."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from segpipe.dataset import read_split  # noqa: E402
from segpipe.errors import SegpipeError  # noqa: E402
from segpipe.files import atomic_write  # noqa: E402
from segpipe.images import read_gray, read_image  # noqa: E402

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


def prediction_grid(test_csv: Path, predictions_dir: Path, n_samples: int, out_path: Path) -> int:
    """Draw the first ``n_samples`` test images: image | prediction | ground truth.

    Returns:
        The number of rows drawn.
    """
    frame = read_split(test_csv).head(n_samples)
    fig, axes = plt.subplots(len(frame), 3, figsize=(9, 3 * len(frame)), squeeze=False)
    for row, (_, item) in zip(axes, frame.iterrows(), strict=True):
        prediction = predictions_dir / f"{item['stem']}.png"
        if not prediction.exists():
            raise SegpipeError(f"{prediction}: prediction not found (run the evaluate stage first)")
        panels = (
            read_image(Path(item["image"])),
            read_gray(prediction),
            read_gray(Path(item["mask"])),
        )
        for ax, panel, title in zip(
            row, panels, ("image", "prediction", "ground truth"), strict=True
        ):
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", interpolation="nearest")
            ax.set_title(f"{title}: {item['stem']}" if title == "image" else title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    _save(fig, out_path)
    return len(frame)


def training_curves(live_dir: Path, out_path: Path) -> None:
    """Plot the per-epoch history that DVCLive wrote under ``live_dir/plots/metrics``."""
    metrics_dir = live_dir / "plots" / "metrics"
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
    n_samples: int, test_csv: Path, predictions_dir: Path, live_dir: Path, out_dir: Path
) -> None:
    """Write ``predictions.png`` and ``training_curves.png`` to ``out_dir``."""
    drawn = prediction_grid(test_csv, predictions_dir, n_samples, out_dir / "predictions.png")
    training_curves(live_dir, out_dir / "training_curves.png")
    log.info("plotted %d test images and the training curves to %s", drawn, out_dir)
