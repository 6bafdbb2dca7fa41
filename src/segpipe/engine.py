"""The only loops over batches: one training epoch, one validation pass, and prediction."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segpipe.distributed import sum_over_ranks
from segpipe.errors import SegpipeError
from segpipe.losses import LossFn
from segpipe.metrics import SegmentationMetrics

log = logging.getLogger(__name__)


class NonFiniteLossError(SegpipeError):
    """Training produced a NaN or infinite loss: the run cannot go on."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``; None means plain fp32.

    ``auto`` is bf16 on CUDA GPUs and CPUs with native bf16 support, fp16 on older GPUs,
    and fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return torch.bfloat16 if native_bf16 else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc maps every allocation above its mmap threshold (at most 32 MiB) afresh
    and unmaps it on free, and trims the heap's free top, so the large activations and
    gradients of each CPU training step are page-faulted and zero-filled by the kernel all
    over again: ~12% of the efficientnet-b3 step at 256 px on 2 cores (BENCHMARKS.md). The
    same as running with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``; peak
    memory does not grow, freed memory just stays with the process. Returns False (and
    changes nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library handle, or not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def adam(params: Iterable[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one (CPU and CUDA): one pass over the
    parameters per step instead of one per operation."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


def logits_to_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class indices (B, H, W) from logits (B, C', H, W): sigmoid > threshold for one
    channel, argmax for several."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits.float()[:, 0]) > threshold).long()
    return logits.argmax(dim=1)


def _batches(loader: DataLoader, desc: str) -> Iterator:
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``. Returns ``{"loss": mean loss over images}``.

    Raises:
        NonFiniteLossError: a batch's loss is NaN or infinite (checked before the weights
            are updated with it).
    """
    model.train()
    total, seen = 0.0, 0
    for batch, (images, masks) in enumerate(_batches(loader, desc), start=1):
        images = _to_device(images, device, channels_last)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, dtype):
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
    num_classes: int,
    threshold: float,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    desc: str = "val",
) -> dict[str, float]:
    """Loss and metrics at the model's input resolution (validation during training)."""
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    total, seen = 0.0, 0
    for images, masks in _batches(loader, desc):
        images = _to_device(images, device, channels_last)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images).float()
        total += loss_fn(logits, masks).item() * images.shape[0]
        seen += images.shape[0]
        metrics.update(logits_to_labels(logits, threshold), masks)
    # Several processes: sum the counts of all ranks, then reduce once (never average scores).
    total, seen = sum_over_ranks(torch.tensor([total, seen], dtype=torch.float64)).tolist()
    metrics.merge_processes()
    return {"loss": total / max(seen, 1), **metrics.compute()}


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(any foreground class) per pixel, (B, H, W), from logits (B, C', H, W): the sigmoid of
    one channel, or 1 - softmax(background) for several."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits.float()[:, 0])
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]


@torch.inference_mode()
def predict_full_resolution(
    model: nn.Module,
    images: torch.Tensor,
    sizes: list[tuple[int, int]],
    threshold: float,
    device: torch.device,
    dtype: torch.dtype | None,
    channels_last: bool,
    with_probability: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Label maps at each image's original (H, W): the logits are resized back bilinearly
    before thresholding, so the result is what a user of the predictions gets. With
    ``with_probability``, each label map comes with its foreground probability map."""
    with autocast(device, dtype):
        logits = model(_to_device(images, device, channels_last)).float()
    out = []
    for i, size in enumerate(sizes):
        resized = F.interpolate(logits[i : i + 1], size=size, mode="bilinear", align_corners=False)
        labels = logits_to_labels(resized, threshold)[0].cpu()
        probability = foreground_probability(resized)[0].cpu() if with_probability else None
        out.append((labels, probability))
    return out
