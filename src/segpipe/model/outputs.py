"""What a network's output channels mean: one sigmoid channel for two classes, softmax
over N channels for N classes; and the one check that another runtime's logits (ONNX,
OpenVINO) give PyTorch's labels."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch

from segpipe.errors import SegpipeError


def logits_to_labels(
    logits: torch.Tensor, threshold: float, *, dtype: torch.dtype = torch.long
) -> torch.Tensor:
    """Class indices (B, H, W) of ``dtype`` from logits (B, C', H, W): sigmoid > threshold for
    one channel, argmax for several. Every label map segpipe makes comes from here."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits.float()[:, 0]) > threshold).to(dtype)
    return logits.argmax(dim=1).to(dtype)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(any foreground class) per pixel, (B, H, W), from logits (B, C', H, W): the sigmoid of
    one channel, or 1 - softmax(background) for several."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits.float()[:, 0])
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The probability of each class (B, C, H, W) float32 from logits (B, C', H, W): for one
    channel (two classes) 1 - sigmoid and sigmoid, else the softmax. Channel 1 of a binary
    model is above the threshold exactly where :func:`logits_to_labels` gives 1."""
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits.float())
        return torch.cat([1.0 - foreground, foreground], dim=1)
    return torch.softmax(logits.float(), dim=1)


@dataclasses.dataclass(frozen=True)
class Parity:
    """How closely another runtime reproduces PyTorch's logits, and its labels."""

    shapes: list[list[int]]
    max_abs_diff: float
    label_mismatch_fraction: float


Forward = Callable[[torch.Tensor], torch.Tensor]


def check_parity(
    forward: Forward,
    reference: Forward,
    shapes: Iterable[tuple[int, ...]],
    *,
    what: str,
    threshold: float = 0.5,
    seed: int = 0,
) -> Parity:
    """Run seeded random inputs of ``shapes`` through ``forward`` and PyTorch's ``reference``
    (both float32 logits) and compare the logits, and the labels :func:`logits_to_labels`
    makes of them at ``threshold`` (binary models).

    Raises:
        SegpipeError: ``what`` gives logits of another shape than PyTorch.
    """
    generator = torch.Generator().manual_seed(seed)
    checked, max_diff, mismatched, pixels = [], 0.0, 0, 0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        expected = reference(x)
        got = forward(x)
        if got.shape != expected.shape:
            raise SegpipeError(
                f"{what}: logits of shape {tuple(got.shape)} for input {tuple(shape)}, PyTorch "
                f"gives {tuple(expected.shape)}"
            )
        diff = (got - expected).abs().max().item()
        max_diff = diff if math.isnan(diff) else max(max_diff, diff)
        labels = logits_to_labels(got, threshold) != logits_to_labels(expected, threshold)
        mismatched += int(labels.sum())
        pixels += labels.numel()
        checked.append(list(shape))
    return Parity(checked, max_diff, mismatched / pixels)
