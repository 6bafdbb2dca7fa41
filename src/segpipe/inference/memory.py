"""How much memory a forward pass takes, estimated before it runs, and how much there is.

A model that sees images whole at their own scale (crop training) takes memory in proportion
to each image's pixels: a 3000x3000 photo needs gigabytes where its training crops needed
megabytes. Activations grow linearly with the input's pixels, so one traced pass over a small
input gives the bytes per pixel; the peak of the tensors alive at once is counted exactly, and
:data:`MARGIN` covers what the count misses (convolution work buffers, the allocator).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MARGIN = 1.5
"""Measured peak RSS over the traced peak of live tensors, for one fp32 forward pass on the
CPU: 1.35 (Unet/efficientnet-b3) to 1.5 (Unet/resnet18) at 1024x1024."""

CALIBRATION_SIDE = 64
"""The side of the traced input: large enough for every encoder's five downsamplings."""


class _PeakTensors(TorchDispatchMode):
    """Counts the bytes of the tensor storages alive at once during the ops run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.live:  # a view of a storage already counted
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def bytes_per_pixel(model: nn.Module) -> float:
    """The peak bytes of one fp32 forward pass of ``model`` (eval mode, on the CPU) per input
    pixel, :data:`MARGIN` included."""
    side = CALIBRATION_SIDE
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, side, side, device=device)
    tracker = _PeakTensors()
    with torch.inference_mode(), tracker:
        model(x)
    return tracker.peak * MARGIN / side**2


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a forward pass on ``device`` (the GPU's free memory, the machine's
    available memory for the CPU); None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
