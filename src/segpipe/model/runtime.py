"""Where and how a model runs: device, autocast precision, memory layout, and the memory it
takes (the allocator setting and the peak)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses

import torch
from torch import nn

from segpipe.errors import SegpipeError


def pick_device(local_rank: int | None = None) -> torch.device:
    """The one place a device is chosen: CUDA where there is a GPU (GPU ``local_rank`` for one
    process of several), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)


def parse_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (``None``: :func:`pick_device`), refusing one this machine
    does not have with a one-line error."""
    if device is None:
        return pick_device()
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        hint = "not a device name (e.g. cpu, cuda, cuda:1)"
        raise SegpipeError(f"device {device!r}: {hint}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise SegpipeError(f"device {device!r}: this machine has {count} CUDA GPU(s)")
    elif chosen.type != "cpu":
        raise SegpipeError(f"device {device!r}: segpipe runs on cpu or cuda")
    return chosen


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


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: the values that travel together through every loop.

    Args:
        device: where the model and its batches live.
        dtype: the autocast dtype; None is plain fp32.
        channels_last: channels-last memory layout for the model and its input batches.
    """

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool = dataclasses.field(kw_only=True)

    @classmethod
    def choose(
        cls, precision: str, *, channels_last: bool, device: torch.device | None = None
    ) -> Runtime:
        """The runtime for ``train.precision`` and ``train.channels_last`` on ``device``
        (default: :func:`pick_device`)."""
        device = pick_device() if device is None else device
        return cls(device, resolve_precision(precision, device), channels_last=channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to :attr:`dtype`, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch (N, C, H, W) on the device, in the model's memory layout."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in the memory layout its inputs will have."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler where training needs one (fp16 autocast on CUDA), else None."""
        if self.dtype == torch.float16 and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None


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
