"""The training loops over batches: one training epoch and one validation pass (prediction is
:mod:`segpipe.inference.predictor`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from segpipe.distributed import sum_over_ranks
from segpipe.errors import SegpipeError
from segpipe.metrics import SegmentationMetrics
from segpipe.model.outputs import logits_to_labels
from segpipe.progress import progress
from segpipe.runtime import Runtime
from segpipe.training.losses import LossFn

log = logging.getLogger(__name__)


class NonFiniteLossError(SegpipeError):
    """Training produced a NaN or infinite loss: the run cannot go on."""


OPTIMIZERS = ("adam", "adamw", "sgd")
"""``train.optimizer`` names."""


def build_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    device: torch.device,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``train.optimizer`` by name: Adam (L2 ``weight_decay``), AdamW (decoupled decay) or SGD
    with ``momentum``, each with its fused kernel where torch has one (CPU and CUDA).

    Raises:
        SegpipeError: an unknown name, listing the valid ones.
    """
    fused = device.type in ("cpu", "cuda")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused
        )
    raise SegpipeError(
        f"train.optimizer: unknown optimizer {name!r} (valid: {', '.join(OPTIMIZERS)})"
    )


def _batches(loader: DataLoader, desc: str) -> Iterator:
    return progress(loader, desc, unit="batch")


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    *,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``. Returns ``{"loss": mean loss over images}``.

    ``scaler``: the loss scaler of fp16 training on CUDA (:meth:`Runtime.grad_scaler`).

    Raises:
        NonFiniteLossError: a batch's loss is NaN or infinite (checked before the weights
            are updated with it).
    """
    model.train()
    total, seen = 0.0, 0
    for batch, (images, masks) in enumerate(_batches(loader, desc), start=1):
        images = runtime.to_device(images)
        masks = masks.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)
        loss = loss_fn(logits.float(), masks)
        if not math.isfinite(value := loss.item()):
            raise NonFiniteLossError(f"the loss is {value} at batch {batch} of {len(loader)}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += value * images.shape[0]
        seen += images.shape[0]
    total, seen = sum_over_ranks(torch.tensor([total, seen], dtype=torch.float64)).tolist()
    return {"loss": total / max(seen, 1)}


@torch.inference_mode()
def evaluate_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    runtime: Runtime,
    *,
    num_classes: int,
    threshold: float,
    desc: str = "val",
) -> dict[str, float]:
    """Loss and metrics at the model's input resolution (validation during training)."""
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    total, seen = 0.0, 0
    for images, masks in _batches(loader, desc):
        images = runtime.to_device(images)
        masks = masks.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images).float()
        total += loss_fn(logits, masks).item() * images.shape[0]
        seen += images.shape[0]
        metrics.update(logits_to_labels(logits, threshold), masks)
    # Several processes: sum the counts of all ranks, then reduce once (never average scores).
    total, seen = sum_over_ranks(torch.tensor([total, seen], dtype=torch.float64)).tolist()
    metrics.merge_processes()
    return {"loss": total / max(seen, 1), **metrics.compute()}
