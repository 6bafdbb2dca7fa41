"""The train stage: fit a model on the train split, validate every epoch, keep the best."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import albumentations as A
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from segpipe import distributed
from segpipe.config import Params
from segpipe.constants import LIVE_HISTORY
from segpipe.data.cache import cache_paths, shapes_path
from segpipe.data.dataset import CachedDataset, build_transform
from segpipe.data.geometry import crop_steps, whole_image_steps
from segpipe.errors import SegpipeError
from segpipe.files import atomic_write, require_apart, require_inside
from segpipe.model.checkpoint import Checkpoint, ModelSpec, save_checkpoint
from segpipe.model.network import build_model, encoder_normalisation
from segpipe.resources import peak_rss_mb
from segpipe.runtime import Environment, Runtime, reuse_freed_memory
from segpipe.training import resume, val_images
from segpipe.training.engine import (
    NonFiniteLossError,
    build_optimizer,
    evaluate_epoch,
    train_one_epoch,
)
from segpipe.training.finetune import freeze_encoder, initialise
from segpipe.training.losses import LossFn, build_loss
from segpipe.training.schedule import EpochSchedule, stops_early
from segpipe.training.seeding import seed_everything, seed_worker

log = logging.getLogger(__name__)

# Validation during training thresholds at 0.5 (the tutorial's value), so the choice of the
# best epoch does not depend on evaluate.threshold and changing that reruns only evaluate.
VAL_THRESHOLD = 0.5


def run(
    params: Params,
    cache_dir: Path,
    model_path: Path,
    live_dir: Path,
    resume_dir: Path | None = None,
    weights_dir: Path | None = None,
) -> dict[str, float]:
    """Train on the cache stage's arrays in ``cache_dir``; write the best checkpoint to
    ``model_path`` and the history to ``live_dir``.

    Files the model starts from (``model.encoder_weights``, ``model.init_from``) must lie below
    ``weights_dir`` if given: the folder the train stage depends on.

    Training ends after ``train.epochs``, or earlier by ``train.early_stopping``.

    With ``resume_dir``, the full training state is saved below it after every epoch (see
    :class:`segpipe.training.resume.Resume`), a run interrupted earlier (same params, data
    and code) continues after its last completed epoch, and a finished run deletes its state.

    Returns:
        The validation metrics of the best epoch.
    """

    _check_start_files(params, model_path, weights_dir)
    for folder, option in ((live_dir, "--live"), (resume_dir, "--resume")):
        if folder is not None:  # both are replaced as a whole
            require_apart(folder, option, {"--cache": cache_dir, "--model": model_path})
    ctx = distributed.setup()
    try:
        best = _fit(params, cache_dir, model_path, live_dir, resume_dir, ctx)
        distributed.finish(ctx)
        return best
    finally:
        distributed.cleanup(ctx)


def _fit(
    params: Params,
    cache_dir: Path,
    model_path: Path,
    live_dir: Path,
    resume_dir: Path | None,
    ctx: distributed.Context,
) -> dict[str, float]:
    """Set up, restore an interrupted run if there is one, then train the remaining epochs,
    keeping the checkpoint of the best one and saving the resume state after each."""
    t = params.train
    generator = seed_everything(params.seed)
    runtime = Runtime.choose(t.precision, channels_last=t.channels_last, device=ctx.device)
    if runtime.device.type == "cpu":
        reuse_freed_memory()
    loaders = build_loaders(params, cache_dir, ctx, generator)
    learner = build_learner(params, runtime, ctx)
    _log_start(params, loaders, runtime)
    state = resume.TrainingState(
        learner.model,
        learner.optimizer,
        learner.scheduler,
        learner.scaler,
        loaders.augment,
        generator,
    )
    resume_file = _resume_file(params, cache_dir, resume_dir, ctx)
    best, done = _restore(resume_file, state, t.epochs, model_path, live_dir)
    spec = ModelSpec.from_params(params)
    with _history(live_dir, ctx, resumed=done > 0) as live:
        live.step = done
        for epoch in range(done + 1, t.epochs + 1):
            if _stops_early(params, best, done=epoch - 1):
                break
            try:
                val, images_per_s = _epoch(epoch, params, learner, loaders, runtime, live, ctx)
            except NonFiniteLossError as e:
                raise SegpipeError(_non_finite_message(e, epoch, best, model_path)) from None
            if _selection_score(val) > _selection_score(best):
                best = {**val, "epoch": epoch}
                if ctx.is_main:
                    record = Checkpoint(
                        model_config=spec,
                        epoch=epoch,
                        val_dice=val["dice"],
                        train_images_per_s=images_per_s,
                        environment=Environment.current(runtime),
                    )
                    save_checkpoint(model_path, learner.model, record)
            live.next_step()
            if resume_file is not None:
                resume_file.snapshot(
                    state, epoch=epoch, best=best, model_path=model_path, live_dir=live_dir
                )
        live.summary["best"] = {"epoch": best["epoch"], "val_dice": best["dice"]}
    if resume_file is not None:
        resume_file.finish()
    return best


@dataclasses.dataclass(frozen=True)
class Loaders:
    """The training and validation batches of this process.

    Args:
        train, val: the loaders.
        sampler: the distributed sampler of the training set (reshuffled every epoch), or None.
        augment: the training transform, whose random streams the resume file captures.
        n_train, n_val: images in the training and validation splits (all processes).
    """

    train: DataLoader
    val: DataLoader
    sampler: DistributedSampler | None
    augment: A.Compose
    n_train: int
    n_val: int


def build_loaders(
    params: Params, cache_dir: Path, ctx: distributed.Context, generator: torch.Generator
) -> Loaders:
    """Loaders over the cache stage's arrays; with several processes, each takes its shard."""
    t = params.train
    # Each process augments with its own stream; rank 0 alone is the single-process run.
    normalisation = encoder_normalisation(params.model)
    augment = build_transform(
        t.image_size,
        augment=t.augment,
        seed=params.seed + ctx.rank,
        normalisation=normalisation,
        geometry=_steps(t.crop),
        augment_size=t.crop,
    )
    train_set = _cached(cache_dir, "train", augment, crop=t.crop)
    # Crop training validates on whole images at train.scale, as evaluate sees them (tiles
    # aside): its Dice then picks the epoch that scores best there, not on random crops.
    val_geometry = None if t.crop is None else whole_image_steps()
    val_set = _cached(
        cache_dir,
        "val",
        build_transform(
            t.image_size,
            augment=False,
            seed=params.seed,
            normalisation=normalisation,
            geometry=val_geometry,
        ),
        crop=t.crop,
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
    # Whole images of different sizes do not stack: one per batch (batch norm is in eval mode).
    val_batch_size = t.batch_size if t.crop is None else 1
    val_loader = make_loader(
        val_set, val_batch_size, shuffle=False, num_workers=t.num_workers, sampler=val_sampler
    )
    return Loaders(train_loader, val_loader, train_sampler, augment, len(train_set), len(val_set))


def _steps(crop: int | None) -> list[A.BasicTransform] | None:
    """Training's geometry steps: random crops, or None (the cache's square, as is)."""
    return None if crop is None else crop_steps(crop)


def _cached(
    cache_dir: Path, split: str, transform: A.Compose, *, crop: int | None
) -> CachedDataset:
    """The cache stage's arrays of ``split``; with crops, images of their own sizes."""
    shapes = None if crop is None else shapes_path(cache_dir, split)
    return CachedDataset(*cache_paths(cache_dir, split), transform, shapes_path=shapes)


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


@dataclasses.dataclass(frozen=True)
class Learner:
    """The model and what trains it."""

    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: EpochSchedule
    scaler: torch.amp.GradScaler | None


def build_learner(params: Params, runtime: Runtime, ctx: distributed.Context) -> Learner:
    """The model on its device (wrapped for several processes), the loss, the optimizer, the
    lr schedule and, for fp16 on CUDA, the loss scaler."""
    t = params.train
    model = build_model(params.model, params.data.num_classes)
    if params.model.init_from is not None:
        initialise(model, params.model)
    model = runtime.place(model)
    if ctx.distributed:
        if t.freeze_encoder_epochs:
            raise SegpipeError(
                "train.freeze_encoder_epochs: not with several processes (DDP's fixed graph); "
                "set it to 0 or train in one process"
            )
        if t.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # static_graph: some encoders hold parameters the segmentation model never uses (e.g.
        # efficientnet's classification head); a fixed graph lets DDP skip them at no cost.
        device = runtime.device
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
        )
    loss_fn = build_loss(t.loss, params.data.num_classes, t.class_weights)
    optimizer = build_optimizer(
        t.optimizer,
        model.parameters(),
        lr=t.lr,
        device=runtime.device,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
    )
    scheduler = EpochSchedule(optimizer, t)  # stepped once per epoch, after validation
    return Learner(model, loss_fn, optimizer, scheduler, runtime.grad_scaler())


def _check_start_files(params: Params, model_path: Path, weights_dir: Path | None) -> None:
    """Files the model starts from lie in ``weights_dir``; none is the checkpoint to write."""
    m = params.model
    for key, value in (("model.encoder_weights", m.weights_file), ("model.init_from", m.init_from)):
        if value is None:
            continue
        path = require_inside(value, weights_dir, key)
        if path.resolve() == Path(model_path).resolve():
            raise SegpipeError(
                f"{key}: {value} is the checkpoint this stage writes (a DVC output); copy it "
                f"into the weights folder first, e.g. cp {model_path} weights/base.pt"
            )


def _log_start(params: Params, loaders: Loaders, runtime: Runtime) -> None:
    log.info(
        "training %s/%s on %d images (val %d), %d epochs, device %s, autocast %s",
        params.model.arch,
        params.model.encoder,
        loaders.n_train,
        loaders.n_val,
        params.train.epochs,
        runtime.device,
        runtime.dtype or "off",
    )


def _resume_file(
    params: Params, cache_dir: Path, resume_dir: Path | None, ctx: distributed.Context
) -> resume.Resume | None:
    """The resume folder of this run, or None: none asked for, or several processes."""
    if resume_dir is None:
        return None
    if ctx.distributed:
        log.warning(
            "resuming is single-process only: this %d-process run starts over", ctx.world_size
        )
        return None
    data_files = [*cache_paths(cache_dir, "train"), *cache_paths(cache_dir, "val")]
    if params.train.crop is not None:
        data_files += [shapes_path(cache_dir, "train"), shapes_path(cache_dir, "val")]
    return resume.Resume(resume_dir, resume.fingerprint(params, data_files))


def _restore(
    resume_file: resume.Resume | None,
    state: resume.TrainingState,
    epochs: int,
    model_path: Path,
    live_dir: Path,
) -> tuple[dict[str, float], int]:
    """The best validation metrics so far and the number of completed epochs: from the resume
    state (its checkpoint and history put back) if this run was interrupted, else a start."""
    progress = (
        resume_file.restore(state, epochs, model_path=model_path, live_dir=live_dir)
        if resume_file is not None
        else None
    )
    best, done = progress or ({"dice": -math.inf}, 0)
    if done:
        trim_history(live_dir, done)
    return best, done


def _history(live_dir: Path, ctx: distributed.Context, *, resumed: bool) -> Any:
    """DVCLive on rank 0 (appending to the history when ``resumed``); a stand-in elsewhere,
    since only rank 0 writes history, checkpoints and metrics."""
    from dvclive import Live

    if not ctx.is_main:
        return NullLive()
    return Live(dir=str(live_dir), resume=resumed, save_dvc_exp=False, dvcyaml=None, report=None)


def _epoch(
    epoch: int,
    params: Params,
    learner: Learner,
    loaders: Loaders,
    runtime: Runtime,
    live: Any,
    ctx: distributed.Context,
) -> tuple[dict[str, float], float]:
    """Train one epoch, validate, log both and step the scheduler.

    Returns:
        The validation metrics, and the training speed in images per second.

    Raises:
        NonFiniteLossError: from the training pass, before any weight is updated with it.
    """
    t = params.train
    if loaders.sampler is not None:
        loaders.sampler.set_epoch(epoch)
    if t.freeze_encoder_epochs:
        freeze_encoder(learner.model, frozen=epoch <= t.freeze_encoder_epochs)
    start = time.perf_counter()
    train_stats = train_one_epoch(
        learner.model,
        loaders.train,
        learner.loss_fn,
        learner.optimizer,
        runtime,
        scaler=learner.scaler,
        desc=f"epoch {epoch}/{t.epochs} train",
    )
    seconds = time.perf_counter() - start
    val = evaluate_epoch(
        learner.model,
        loaders.val,
        learner.loss_fn,
        runtime,
        num_classes=params.data.num_classes,
        threshold=VAL_THRESHOLD,
        desc=f"epoch {epoch}/{t.epochs} val",
    )
    lr = learner.optimizer.param_groups[0]["lr"]  # the rate this epoch ran at
    _log_epoch(live, ctx, train_stats, val, lr=lr, seconds=seconds, n_train=loaders.n_train)
    if ctx.is_main and val_images.due(epoch, t.val_images_every):
        model = learner.model.module if ctx.distributed else learner.model  # rank 0 alone: no DDP
        classes = params.data.num_classes
        val_images.log_grid(
            live, model, loaders.val.dataset, runtime, num_classes=classes, threshold=VAL_THRESHOLD
        )
    learner.scheduler.step(_selection_score(val))
    log.info(
        "epoch %d/%d: train loss %.4f, val loss %.4f, val dice %.4f, %.1f s",
        epoch,
        t.epochs,
        train_stats["loss"],
        val["loss"],
        val["dice"],
        seconds,
    )
    return val, loaders.n_train / seconds


def _log_epoch(
    live: Any,
    ctx: distributed.Context,
    train_stats: dict[str, float],
    val: dict[str, float],
    *,
    lr: float,
    seconds: float,
    n_train: int,
) -> None:
    """One history row: losses, validation metrics, the lr the epoch ran at, and its cost."""
    live.log_metric("train/loss", train_stats["loss"])
    for key in ("loss", "dice", "iou", "pixel_accuracy"):
        live.log_metric(f"val/{key}", val[key])
    live.log_metric("lr", lr)
    # Cost next to quality in `dvc exp show`: this epoch's training time and speed.
    live.log_metric("perf/epoch_seconds", round(seconds, 2), plot=False)
    live.log_metric("perf/train_images_per_s", round(n_train / seconds, 2), plot=False)
    if ctx.distributed:
        live.log_metric("perf/processes", ctx.world_size, plot=False)
    live.log_metric("perf/peak_rss_mb", round(peak_rss_mb(), 1), plot=False)


def _stops_early(params: Params, best: dict[str, float], *, done: int) -> bool:
    """Whether ``train.early_stopping`` ends training after ``done`` epochs."""
    if "epoch" not in best:
        return False
    best_epoch = int(best["epoch"])
    if not stops_early(params.train, best_epoch=best_epoch, done=done):
        return False
    log.info(
        "early stopping: no better validation Dice for %d epochs (best: epoch %d)",
        done - best_epoch,
        best_epoch,
    )
    return True


def _selection_score(metrics: dict[str, float]) -> float:
    """Validation Dice for choosing the best epoch; a NaN (no foreground in truth or
    prediction anywhere) ranks below every score."""
    dice = metrics["dice"]
    return -1.0 if math.isnan(dice) else dice  # best starts at -inf: epoch 1 is always kept


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
    for tsv in (live_dir / LIVE_HISTORY).rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        column = lines[0].rstrip("\n").split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[column]) < epochs]
        atomic_write(tsv, lambda tmp, kept=kept: tmp.write_text("".join(kept)))
