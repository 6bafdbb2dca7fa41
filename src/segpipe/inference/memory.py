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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from segpipe.data.geometry import MULTIPLE, padded_size
from segpipe.errors import SegpipeError

if TYPE_CHECKING:
    from segpipe.inference.predictor import Predictor

MARGIN = 1.5
"""Measured peak RSS over the traced peak of live tensors, for one fp32 forward pass on the
CPU: 1.35 (Unet/efficientnet-b3) to 1.5 (Unet/resnet18) at 1024x1024."""

MAX_SUGGESTED_TILE = 1024
"""The largest window an out-of-memory refusal suggests (larger gain little)."""

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


def check_memory(predictor: Predictor, sizes: dict[Path, tuple[int, int]], fix: str) -> None:
    """Refuse, before any work, an input too large for memory in one forward pass: a model
    trained on crops sees each image whole at its scale, so a large photo needs gigabytes.
    The estimate (:meth:`~segpipe.inference.predictor.Predictor.memory_needed`) is checked for
    the largest of ``sizes`` (file -> (height, width)) against the memory free on the
    predictor's device. Used by predict and by the evaluate stage.

    Args:
        fix: what the user should do, with ``{tile}`` for a window side that fits.

    Raises:
        SegpipeError: naming the file, the estimate, and a window size that fits.
    """
    if predictor.geometry.fixed_size:
        return  # every input is the image_size square, as in training
    available = available_bytes(predictor.runtime.device)
    if not sizes or available is None:
        return
    tile = predictor.options.tile
    largest = max(sizes, key=lambda path: sizes[path][0] * sizes[path][1])
    need = predictor.memory_needed(*sizes[largest], tile=tile)
    if need <= available:
        return
    too_big = sum(predictor.memory_needed(*hw, tile=tile) > available for hw in sizes.values())
    height, width = sizes[largest]
    model_h, model_w = padded_size(*predictor.geometry.input_size(height, width))
    raise SegpipeError(
        f"{largest}: a {width}x{height} image is one {model_w}x{model_h} input to this model "
        f"({predictor.geometry.describe()}): about {need / 2**30:.1f} GiB for one forward pass, "
        f"{available / 2**30:.1f} GiB free ({too_big} of {len(sizes)} input(s) are too large); "
        f"predict in windows: {fix.format(tile=_fitting_tile(predictor, available))}"
    )


def _fitting_tile(predictor: Predictor, available: int) -> int:
    """The largest window side (a multiple of 32, at most 1024) whose forward pass takes at
    most half the ``available`` memory."""
    tile = MAX_SUGGESTED_TILE
    while tile > MULTIPLE and predictor.window_memory(tile) > available / 2:
        tile -= MULTIPLE
    return tile
