"""The train stage: fit a model on the train split, validate every epoch, keep the best."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from segpipe.config import Params
from segpipe.dataset import SegmentationDataset, build_transform, read_split
from segpipe.engine import (
    evaluate_epoch,
    pick_device,
    resolve_precision,
    train_one_epoch,
)
from segpipe.losses import build_loss
from segpipe.model import build_model, save_checkpoint
from segpipe.seeding import seed_everything, seed_worker

log = logging.getLogger(__name__)

# Validation during training thresholds at 0.5 (the tutorial's value), so the choice of the
# best epoch does not depend on evaluate.threshold and changing that reruns only evaluate.
VAL_THRESHOLD = 0.5


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    generator: torch.Generator | None = None,
    collate_fn: Any = None,
) -> DataLoader:
    """A DataLoader with seeded workers; pinned memory only where it helps (CUDA)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=generator,
        collate_fn=collate_fn,
    )


def run(params: Params, splits_dir: Path, model_path: Path, live_dir: Path) -> dict[str, float]:
    """Train, write the best checkpoint to ``model_path`` and the history to ``live_dir``.

    Returns:
        The validation metrics of the best epoch.
    """
    from dvclive import Live

    t = params.train
    num_classes = params.data.num_classes
    generator = seed_everything(params.seed)
    device = pick_device()
    dtype = resolve_precision(t.precision, device)

    train_set = SegmentationDataset(
        read_split(splits_dir / "train.csv"),
        build_transform(t.image_size, t.augment, params.seed),
        num_classes,
    )
    val_set = SegmentationDataset(
        read_split(splits_dir / "val.csv"),
        build_transform(t.image_size, augment=False, seed=params.seed),
        num_classes,
    )
    train_loader = make_loader(train_set, t.batch_size, True, t.num_workers, generator)
    val_loader = make_loader(val_set, t.batch_size, False, t.num_workers)

    model = build_model(params.model, num_classes).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(t.loss, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    scaler = (
        torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda" else None
    )
    model_config = {
        "arch": params.model.arch,
        "encoder": params.model.encoder,
        "classes": list(params.data.classes),
        "image_size": t.image_size,
        "precision": t.precision,
        "channels_last": t.channels_last,
    }
    log.info(
        "training %s/%s on %d images (val %d), %d epochs, device %s, autocast %s",
        params.model.arch,
        params.model.encoder,
        len(train_set),
        len(val_set),
        t.epochs,
        device,
        dtype or "off",
    )

    best: dict[str, float] = {"dice": -1.0}
    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for epoch in range(1, t.epochs + 1):
            start = time.perf_counter()
            train_stats = train_one_epoch(
                model,
                train_loader,
                loss_fn,
                optimizer,
                device,
                dtype,
                t.channels_last,
                scaler,
                desc=f"epoch {epoch}/{t.epochs} train",
            )
            seconds = time.perf_counter() - start
            val = evaluate_epoch(
                model,
                val_loader,
                loss_fn,
                num_classes,
                VAL_THRESHOLD,
                device,
                dtype,
                t.channels_last,
                desc=f"epoch {epoch}/{t.epochs} val",
            )
            live.log_metric("train/loss", train_stats["loss"])
            for key in ("loss", "dice", "iou", "pixel_accuracy"):
                live.log_metric(f"val/{key}", val[key])
            live.log_metric("lr", optimizer.param_groups[0]["lr"])
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val dice %.4f, %.1f s",
                epoch,
                t.epochs,
                train_stats["loss"],
                val["loss"],
                val["dice"],
                seconds,
            )
            if val["dice"] > best["dice"]:
                best = {**val, "epoch": epoch}
                save_checkpoint(model_path, model, model_config, epoch=epoch, val_dice=val["dice"])
            live.next_step()
        live.summary["best"] = {"epoch": best["epoch"], "val_dice": best["dice"]}
    return best
