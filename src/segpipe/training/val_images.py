"""A few fixed validation images with their predicted masks, logged through DVCLive during
training (``train.val_images_every``), so that ``dvc plots show`` and the VS Code extension show
the model improving: one image per logged epoch, ``<live>/plots/images/val/<step>.png``, which
DVC's tools show as a slider over the steps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from segpipe.data.colours import colourize
from segpipe.data.dataset import CachedDataset
from segpipe.model.outputs import logits_to_labels
from segpipe.runtime import Runtime

COUNT = 4
"""Validation images shown, spread evenly over the split: the same ones every epoch."""

FOLDER = "val"
"""Below DVCLive's ``plots/images``: one ``<step>.png`` per logged epoch (step = epoch - 1, as
in the history)."""

MAX_SIDE = 256
"""Panels larger than this are shrunk by a whole factor: the file stays small at any size."""

GAP = 4
"""Black pixels between two rows."""


def due(epoch: int, every: int) -> bool:
    """Whether ``epoch`` (1-based) logs images: the first, and every ``every``-th after it."""
    return (epoch - 1) % every == 0


def chosen(n: int, count: int = COUNT) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (all of them for ``n <= count``)."""
    if n <= count:
        return list(range(n))
    return [round(i * (n - 1) / (count - 1)) for i in range(count)]


@torch.inference_mode()
def grid(
    model: nn.Module,
    dataset: CachedDataset,
    runtime: Runtime,
    *,
    num_classes: int,
    threshold: float,
) -> Image.Image:
    """One row per chosen image of ``dataset``: the image as cached | its true mask | the
    predicted mask (class colours; binary: white foreground), predicted as validation does.

    ``model`` is left in eval mode (training sets its own mode each epoch); pass the plain
    module, not a DDP wrapper, since only one process draws."""
    model.eval()
    rows = []
    for index in chosen(len(dataset)):
        image, truth = dataset.cached(index)
        tensor, _ = dataset[index]
        with runtime.autocast():
            logits = model(runtime.to_device(tensor[None])).float()
        # Crop training validates whole images padded below and to the right: cut the padding.
        predicted = (
            logits_to_labels(logits, threshold)[0].cpu().numpy()[: len(truth), : truth.shape[1]]
        )
        panels = (image, colourize(truth, num_classes), colourize(predicted, num_classes))
        rows.append(np.hstack(panels))
    return picture(rows)


def picture(rows: list[np.ndarray]) -> Image.Image:
    """The rows (image | truth | prediction, uint8) one below the other, :data:`GAP` apart and
    padded on the right to the widest; shrunk by a whole factor where a panel's side is above
    :data:`MAX_SIDE`."""
    side = max(max(row.shape[0], row.shape[1] // 3) for row in rows)
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, GAP), (0, width - row.shape[1]), (0, 0))) for row in rows]
    image = Image.fromarray(np.vstack(padded)[:-GAP])
    factor = math.ceil(side / MAX_SIDE)
    return image.reduce(factor) if factor > 1 else image


def log_grid(
    live: Any,
    model: nn.Module,
    dataset: CachedDataset,
    runtime: Runtime,
    *,
    num_classes: int,
    threshold: float,
) -> None:
    """Log :func:`grid` as the image of DVCLive's current step in ``live``."""
    image = grid(model, dataset, runtime, num_classes=num_classes, threshold=threshold)
    live.log_image(f"{FOLDER}/{live.step}.png", image)
