"""The evaluate stage: score the best checkpoint on the test split at original resolution."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from segpipe import model_card
from segpipe.config import Params
from segpipe.dataset import read_split
from segpipe.files import atomic_save_image, atomic_write, write_json
from segpipe.images import read_pair
from segpipe.inference import Predictor
from segpipe.metrics import SegmentationMetrics
from segpipe.split import SPLITS

log = logging.getLogger(__name__)


def run(
    params: Params,
    model_path: Path,
    splits_dir: Path,
    metrics_path: Path,
    per_image_path: Path,
    predictions_dir: Path,
    card_path: Path | None = None,
) -> dict[str, float]:
    """Write ``metrics_path`` (JSON), ``per_image_path`` (CSV), one predicted mask per test
    image (``predictions_dir/<stem>.png``, at the image's own size) and the model card.

    Returns:
        The metrics written.
    """
    cfg = params.evaluate
    predictor = Predictor(model_path, cfg.threshold)
    frame = read_split(splits_dir / "test.csv")
    start_time = time.perf_counter()
    metrics = SegmentationMetrics(predictor.num_classes)
    rows = []
    predictions_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(frame), cfg.batch_size):
        batch = frame.iloc[start : start + cfg.batch_size]
        pairs = [
            read_pair(Path(i), Path(m), predictor.num_classes)
            for i, m in zip(batch["image"], batch["mask"], strict=True)
        ]
        preds = predictor.predict([image for image, _ in pairs])
        for pred, (_, mask), (_, row) in zip(preds, pairs, batch.iterrows(), strict=True):
            dice, iou = metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None])
            atomic_save_image(predictor.to_png(pred), predictions_dir / f"{row['stem']}.png")
            rows.append(
                {
                    "stem": row["stem"],
                    "image": row["image"],
                    "mask": row["mask"],
                    "dice": dice[0],
                    "iou": iou[0],
                    "true_fg_fraction": float((mask > 0).mean()),
                    "pred_fg_fraction": float((pred > 0).mean()),
                }
            )
    images_per_s = len(rows) / (time.perf_counter() - start_time)
    result = {
        **metrics.compute(),
        **metrics.bootstrap_interval(seed=params.seed),
        "n_images": len(rows),
        "threshold": cfg.threshold,
    }
    per_image = pd.DataFrame(rows)
    atomic_write(
        per_image_path, lambda tmp: per_image.to_csv(tmp, index=False, float_format="%.6f")
    )
    write_json(metrics_path, result)
    if card_path is not None:
        counts = {name: len(read_split(splits_dir / f"{name}.csv")) for name in SPLITS}
        model_card.write(card_path, params, result, predictor.meta, counts, images_per_s)
    log.info(
        "test: dice %.4f, iou %.4f, pixel accuracy %.4f over %d images",
        result["dice"],
        result["iou"],
        result["pixel_accuracy"],
        len(rows),
    )
    return result
