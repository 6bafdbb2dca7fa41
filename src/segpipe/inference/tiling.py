"""Logits of a batch beyond one plain forward pass: sliding windows and flip averaging.

Both run outside the network (and outside an exported ONNX graph): ``evaluate.tile`` splits a
model input into overlapping windows whose logits are averaged where they overlap (MMSegmentation's
``slide`` mode), and ``evaluate.tta: flip`` averages the logits of the input and of its mirror.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from segpipe.config import EvaluateConfig, Tta

Forward = Callable[[torch.Tensor], torch.Tensor]
"""(N, 3, H, W) model input -> (N, C, H, W) float32 logits."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    """How evaluate and predict turn a model input into logits (``evaluate.*``).

    Args:
        tile: window side (a multiple of 32), or None for the whole input at once.
        overlap: share of a window its neighbour repeats, in [0, 1).
        tta: ``none`` or ``flip`` (horizontal-flip averaging of logits).
    """

    tile: int | None = None
    overlap: float = 0.0
    tta: Tta = "none"

    @classmethod
    def from_evaluate(cls, cfg: EvaluateConfig) -> InferenceOptions:
        return cls(tile=cfg.tile, overlap=cfg.overlap, tta=cfg.tta)

    @property
    def plain(self) -> bool:
        """One forward pass over the whole input: today's inference."""
        return self.tile is None and self.tta == "none"


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Offsets of windows of ``window`` along an axis of ``length`` that cover it, stepping by
    ``window * (1 - overlap)`` and ending flush with its end; ``[0]`` when one window covers it."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def flip_averaged(forward: Forward) -> Forward:
    """``forward`` averaged with its result on the horizontally mirrored input, mirrored back."""

    def averaged(x: torch.Tensor) -> torch.Tensor:
        mirrored = forward(torch.flip(x, dims=(3,)))
        return (forward(x) + torch.flip(mirrored, dims=(3,))) / 2

    return averaged


def tiled(forward: Forward, x: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """Logits of ``x`` from ``tile`` x ``tile`` windows (cut to the input where it is smaller),
    averaged where windows overlap. One window that covers ``x`` is exactly ``forward(x)``.

    Shape:
        x: (N, 3, H, W) with H and W multiples of 32; returns (N, C, H, W).
    """
    height, width = x.shape[2:]
    win_h, win_w = min(tile, height), min(tile, width)
    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, height, width), device=x.device)
    for top in window_starts(height, win_h, overlap):
        for left in window_starts(width, win_w, overlap):
            logits = forward(x[:, :, top : top + win_h, left : left + win_w])
            if total is None:
                total = logits.new_zeros((x.shape[0], logits.shape[1], height, width))
            total[:, :, top : top + win_h, left : left + win_w] += logits
            count[:, :, top : top + win_h, left : left + win_w] += 1
    assert total is not None  # window_starts gives at least one window per axis
    return total / count


def logits_of(forward: Forward, x: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """The logits of ``x`` as ``options`` say: windows outside, flip averaging inside each."""
    if options.tta == "flip":
        forward = flip_averaged(forward)
    if options.tile is None:
        return forward(x)
    return tiled(forward, x, options.tile, options.overlap)
