"""The train stage: fit a model on the train split, validate every epoch, keep the best."""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from segpipe.config import Params
from segpipe.data.cache import cache_paths
from segpipe.data.dataset import CachedDataset, build_transform
from segpipe.errors import SegpipeError
from segpipe.files import atomic_write
from segpipe.model.checkpoint import Checkpoint, ModelSpec, save_checkpoint
from segpipe.model.network import build_model, unwrap
from segpipe.model.runtime import Runtime, reuse_freed_memory
from segpipe.training import distributed, resume
from segpipe.training.engine import NonFiniteLossError, adam, evaluate_epoch, train_one_epoch
from segpipe.training.losses import build_loss
from segpipe.training.seeding import seed_everything, seed_worker

log = logging.getLogger(__name__)

# Validation during training thresholds at 0.5 (the tutorial's value), so the choice of the
# best epoch does not depend on evaluate.threshold and changing that reruns only evaluate.
VAL_THRESHOLD = 0.5


class NullLive:
    """Stands in for DVCLive on ranks other than 0, which write nothing."""

    step = 0
    summary: dict[str, Any] = {}

    def __enter__(self) -> NullLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log_metric(self, *args: Any, **kwargs: Any) -> None:
        return None

    def next_step(self) -> None:
        return None


def trim_history(live_dir: Path, epochs: int) -> None:
    """Drop DVCLive history rows past ``epochs`` completed epochs (steps 0..epochs-1): an
    interrupted epoch may have logged some before the kill."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        column = lines[0].rstrip("\n").split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[column]) < epochs]
        atomic_write(tsv, lambda tmp, kept=kept: tmp.write_text("".join(kept)))


def _selection_score(metrics: dict[str, float]) -> float:
    """Validation Dice for choosing the best epoch; a NaN (no foreground in truth or
    prediction anywhere) ranks below every score."""
    dice = metrics["dice"]
    return -1.0 if math.isnan(dice) else dice  # best starts at -inf: epoch 1 is always kept


def _last_batch_is_single(n_images: int, batch_size: int) -> bool:
    """Whether an epoch would end with a batch of one image, which training drops: batch norm
    cannot normalise a single value per channel (DeepLabV3Plus's image pooling, or any model
    at 32 px). With shuffling, a different image sits out each epoch.

    Raises:
        SegpipeError: the training split (per process) holds a single image.
    """
    if n_images == 1:
        raise SegpipeError(
            "train: the train split holds 1 image (per process): batch norm needs at least 2 "
            "per batch; add images or lower split.val_fraction / split.test_fraction"
        )
    if n_images % batch_size == 1:
        log.info("the last training batch would hold 1 image: it is dropped each epoch")
        return True
    return False


def _non_finite_message(
    error: NonFiniteLossError, epoch: int, best: dict[str, float], model_path: Path
) -> str:
    kept = (
        f"{model_path} keeps the best epoch so far ({best['epoch']}, val dice {best['dice']:.4f})"
        if "epoch" in best
        else f"no checkpoint was written to {model_path}"
    )
    return (
        f"train: {error} in epoch {epoch}; training stopped ({kept}). Lower train.lr, "
        "or check train.class_weights and the data"
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    generator: torch.Generator | None = None,
    sampler: torch.utils.data.Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with seeded workers; pinned memory only where it helps (CUDA)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        # Not persistent: each epoch's workers are seeded from `generator`, whose state the
        # resume file holds; persistent workers would carry RNG state that no file captures.
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=generator,
    )


def run(
    params: Params,
    cache_dir: Path,
    model_path: Path,
    live_dir: Path,
    resume_path: Path | None = None,
) -> dict[str, float]:
    """Train on the cache stage's arrays in ``cache_dir``; write the best checkpoint to
    ``model_path`` and the history to ``live_dir``.

    With ``resume_path``, the full training state is saved there after every epoch, and a run
    interrupted earlier (same params and data) continues after its last completed epoch.

    Returns:
        The validation metrics of the best epoch.
    """

    ctx = distributed.setup()
    try:
        return _fit(params, cache_dir, model_path, live_dir, resume_path, ctx)
    finally:
        distributed.cleanup(ctx)


def _fit(
    params: Params,
    cache_dir: Path,
    model_path: Path,
    live_dir: Path,
    resume_path: Path | None,
    ctx: distributed.Context,
) -> dict[str, float]:
    from dvclive import Live

    t = params.train
    num_classes = params.data.num_classes
    generator = seed_everything(params.seed)
    runtime = Runtime.choose(t.precision, channels_last=t.channels_last, device=ctx.device)
    device = runtime.device
    if device.type == "cpu":
        reuse_freed_memory()
    if ctx.distributed and resume_path is not None:
        log.warning(
            "resuming is single-process only: this %d-process run starts over", ctx.world_size
        )
        resume_path = None

    # Each process augments with its own stream; rank 0 alone is the single-process run.
    train_set = CachedDataset(
        *cache_paths(cache_dir, "train"),
        build_transform(t.image_size, augment=t.augment, seed=params.seed + ctx.rank),
    )
    val_set = CachedDataset(
        *cache_paths(cache_dir, "val"),
        build_transform(t.image_size, augment=False, seed=params.seed),
    )
    train_sampler = (
        DistributedSampler(train_set, ctx.world_size, ctx.rank, shuffle=True, seed=params.seed)
        if ctx.distributed
        else None
    )
    val_sampler = (
        distributed.ShardSampler(len(val_set), ctx.rank, ctx.world_size)
        if ctx.distributed
        else None
    )
    train_loader = make_loader(
        train_set,
        t.batch_size,
        shuffle=True,
        num_workers=t.num_workers,
        generator=generator,
        sampler=train_sampler,
        drop_last=_last_batch_is_single(len(train_sampler or train_set), t.batch_size),
    )
    val_loader = make_loader(
        val_set, t.batch_size, shuffle=False, num_workers=t.num_workers, sampler=val_sampler
    )

    model = runtime.place(build_model(params.model, num_classes))
    if ctx.distributed:
        if t.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # static_graph: some encoders hold parameters the segmentation model never uses (e.g.
        # efficientnet's classification head); a fixed graph lets DDP skip them at no cost.
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
        )
    loss_fn = build_loss(t.loss, num_classes, t.class_weights)
    optimizer = adam(model.parameters(), t.lr, device)
    # Stepped once per epoch: lr follows a half cosine from train.lr down to 0 at the last epoch.
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
        if t.scheduler == "cosine"
        else None
    )
    scaler = runtime.grad_scaler()
    spec = ModelSpec.from_params(params)
    log.info(
        "training %s/%s on %d images (val %d), %d epochs, device %s, autocast %s",
        params.model.arch,
        params.model.encoder,
        len(train_set),
        len(val_set),
        t.epochs,
        device,
        runtime.dtype or "off",
    )

    data_files = [*cache_paths(cache_dir, "train"), *cache_paths(cache_dir, "val")]
    run_id = resume.fingerprint(params, data_files) if resume_path else ""
    state = resume.load(resume_path, run_id) if resume_path else None
    best: dict[str, float] = {"dice": -math.inf}
    done = 0  # completed epochs
    if state is not None and state["epoch"] < t.epochs:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        resume.restore_rng(state["rng"], train_set.transform, generator)
        best, done = state["best"], state["epoch"]
        trim_history(live_dir, done)
        log.info("resuming after epoch %d/%d from %s", done, t.epochs, resume_path)

    live_logger = (
        Live(dir=str(live_dir), resume=done > 0, save_dvc_exp=False, dvcyaml=None, report=None)
        if ctx.is_main
        else NullLive()  # only rank 0 writes history, checkpoints and metrics
    )
    with live_logger as live:
        live.step = done
        for epoch in range(done + 1, t.epochs + 1):
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            start = time.perf_counter()
            try:
                train_stats = train_one_epoch(
                    model,
                    train_loader,
                    loss_fn,
                    optimizer,
                    runtime,
                    scaler=scaler,
                    desc=f"epoch {epoch}/{t.epochs} train",
                )
            except NonFiniteLossError as e:
                raise SegpipeError(_non_finite_message(e, epoch, best, model_path)) from None
            seconds = time.perf_counter() - start
            val = evaluate_epoch(
                model,
                val_loader,
                loss_fn,
                runtime,
                num_classes=num_classes,
                threshold=VAL_THRESHOLD,
                desc=f"epoch {epoch}/{t.epochs} val",
            )
            live.log_metric("train/loss", train_stats["loss"])
            for key in ("loss", "dice", "iou", "pixel_accuracy"):
                live.log_metric(f"val/{key}", val[key])
            live.log_metric("lr", optimizer.param_groups[0]["lr"])
            # Cost next to quality in `dvc exp show`: this epoch's training time and speed.
            live.log_metric("perf/epoch_seconds", round(seconds, 2), plot=False)
            live.log_metric(
                "perf/train_images_per_s", round(len(train_set) / seconds, 2), plot=False
            )
            if ctx.distributed:
                live.log_metric("perf/processes", ctx.world_size, plot=False)
            live.log_metric("perf/peak_rss_mb", round(peak_rss_mb(), 1), plot=False)
            if scheduler is not None:
                scheduler.step()
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val dice %.4f, %.1f s",
                epoch,
                t.epochs,
                train_stats["loss"],
                val["loss"],
                val["dice"],
                seconds,
            )
            if _selection_score(val) > _selection_score(best):
                best = {**val, "epoch": epoch}
                if ctx.is_main:
                    record = Checkpoint(
                        model_config=spec,
                        epoch=epoch,
                        val_dice=val["dice"],
                        train_images_per_s=len(train_set) / seconds,
                    )
                    save_checkpoint(model_path, model, record)
            live.next_step()
            if resume_path is not None:
                resume.save(
                    resume_path,
                    {
                        "fingerprint": run_id,
                        "epoch": epoch,
                        "best": best,
                        "model": {
                            k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()
                        },
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler else None,
                        "scaler": scaler.state_dict() if scaler else None,
                        "rng": resume.capture_rng(train_set.transform, generator),
                    },
                )
        live.summary["best"] = {"epoch": best["epoch"], "val_dice": best["dice"]}
    return best
