"""Floating-point operations of a forward pass, counted by torch's own counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs (a multiply-add is 2) of one forward pass of ``model`` on one
    3 x ``image_size`` x ``image_size`` image, in fp32 so every operation is seen.

    ``torch.utils.flop_counter`` counts convolutions, matrix products and their kind
    (pointwise ops, batch norm and activations are not counted: they are memory-bound and
    a few percent of the work). A convolution counts 2 x its output elements x its weight's
    ``in_channels / groups x kernel`` elements, so a depthwise convolution counts one
    channel per output channel, not all of them (a test checks this). The pass runs in eval
    mode (a training model's batch norms keep their statistics); the mode is restored.
    """
    x = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    training = model.training
    try:
        with torch.inference_mode(), counter:
            model.eval()(x)
    finally:
        model.train(training)
    return counter.get_total_flops()
