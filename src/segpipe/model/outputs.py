"""What a network's output channels mean: one sigmoid channel for two classes, softmax
over N channels for N classes."""

from __future__ import annotations

import torch


def logits_to_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Class indices (B, H, W) from logits (B, C', H, W): sigmoid > threshold for one
    channel, argmax for several."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits.float()[:, 0]) > threshold).long()
    return logits.argmax(dim=1)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(any foreground class) per pixel, (B, H, W), from logits (B, C', H, W): the sigmoid of
    one channel, or 1 - softmax(background) for several."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits.float()[:, 0])
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]
