"""The evaluate stage: score the best checkpoint on the test split at original resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from segpipe.config import EvaluateConfig
from segpipe.dataset import FullResolutionDataset, collate_full_resolution, read_split
from segpipe.engine import pick_device, predict_full_resolution, resolve_precision
from segpipe.files import atomic_save_image, atomic_write, write_json
from segpipe.metrics import SegmentationMetrics
from segpipe.model import load_checkpoint
from segpipe.train import make_loader

log = logging.getLogger(__name__)


def mask_to_png(labels: np.ndarray, num_classes: int) -> Image.Image:
    """Binary masks are saved as 0/255, multi-class ones as class indices."""
    scale = 255 if num_classes == 2 else 1
    return Image.fromarray((labels * scale).astype(np.uint8))


def run(
    cfg: EvaluateConfig,
    model_path: Path,
    test_csv: Path,
    metrics_path: Path,
    per_image_path: Path,
    predictions_dir: Path,
) -> dict[str, float]:
    """Write ``metrics_path`` (JSON), ``per_image_path`` (CSV) and one predicted mask per
    test image (``predictions_dir/<stem>.png``, at the image's own size).

    Returns:
        The metrics written.
    """
    model, meta = load_checkpoint(model_path)
    model_config = meta["model_config"]
    num_classes = len(model_config["classes"])
    device = pick_device()
    dtype = resolve_precision(model_config.get("precision", "fp32"), device)
    channels_last = bool(model_config.get("channels_last", False))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    frame = read_split(test_csv)
    dataset = FullResolutionDataset(frame, model_config["image_size"], num_classes)
    loader = make_loader(dataset, cfg.batch_size, False, 0, collate_fn=collate_full_resolution)
    metrics = SegmentationMetrics(num_classes)
    rows = []
    predictions_dir.mkdir(parents=True, exist_ok=True)
    for images, masks, indices in loader:
        sizes = [tuple(m.shape) for m in masks]
        preds = predict_full_resolution(
            model, images, sizes, cfg.threshold, device, dtype, channels_last
        )
        for pred, mask, index in zip(preds, masks, indices, strict=True):
            dice, iou = metrics.update(pred[None], mask[None])
            row = frame.iloc[index]
            atomic_save_image(
                mask_to_png(pred.numpy(), num_classes), predictions_dir / f"{row['stem']}.png"
            )
            rows.append(
                {
                    "stem": row["stem"],
                    "image": row["image"],
                    "mask": row["mask"],
                    "dice": dice[0],
                    "iou": iou[0],
                    "true_fg_fraction": (mask > 0).float().mean().item(),
                    "pred_fg_fraction": (pred > 0).float().mean().item(),
                }
            )
    result = {**metrics.compute(), "n_images": len(rows), "threshold": cfg.threshold}
    per_image = pd.DataFrame(rows)
    atomic_write(
        per_image_path, lambda tmp: per_image.to_csv(tmp, index=False, float_format="%.6f")
    )
    write_json(metrics_path, result)
    log.info(
        "test: dice %.4f, iou %.4f, pixel accuracy %.4f over %d images",
        result["dice"],
        result["iou"],
        result["pixel_accuracy"],
        len(rows),
    )
    return result
