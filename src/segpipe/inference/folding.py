"""Batch norms folded into the convolutions before them, for inference.

In eval mode a batch norm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * w
+ b``; after a convolution it can be merged into that convolution's weights and bias, which
saves a pass over every activation (9% of the Unet/efficientnet-b3 forward pass on the
reference CPU, BENCHMARKS.md). The checkpoint keeps its batch norms: only the
predictor's copy of the network is folded.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from segpipe.errors import SegpipeError


def fold_batch_norms(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` in which each batch norm whose input is the untouched
    output of the convolution run right before it is folded into that convolution (the norm
    becomes an identity), and how many were folded.

    The pairs are found by running ``example`` once with hooks. The folded copy must give
    the logits of ``model`` on ``example`` (fp32, within rounding); if it does not (a
    convolution's output also feeds another layer, say), ``model`` itself comes back, with 0.

    Raises:
        SegpipeError: ``model`` gives NaN or infinite logits on ``example``.
    """
    model = model.eval()
    folded = copy.deepcopy(model)
    pairs = _conv_norm_pairs(folded, example)
    for conv, norm_name in pairs:
        parent_name, _, attr = norm_name.rpartition(".")
        parent = folded.get_submodule(parent_name)
        norm = getattr(parent, attr)
        conv.weight, conv.bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            norm.running_mean,
            norm.running_var,
            norm.eps,
            norm.weight,
            norm.bias,
        )
        setattr(parent, attr, nn.Identity())
    with torch.no_grad():
        expected, got = model(example).float(), folded(example).float()
    if not bool(torch.isfinite(expected).all()):
        # Finite weights can still overflow; every mask would come out as background.
        raise SegpipeError(
            "the network gives NaN or infinite logits on a test input although its weights "
            "are finite (weights far too large?); retrain or use another checkpoint"
        )
    scale = expected.abs().max().item() + 1e-6
    if not pairs or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        return model, 0
    return folded, len(pairs)


def _conv_norm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Conv2d, str]]:
    """(convolution, name of the batch norm) for each batch norm whose input is the output of
    the convolution run just before it, not changed in place since (an in-place ReLU between
    them bumps the tensor's version)."""
    last: list[tuple[nn.Conv2d, torch.Tensor, int]] = []
    pairs: list[tuple[nn.Conv2d, str]] = []
    names = {module: name for name, module in model.named_modules()}

    def after_conv(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        last[:] = [(module, out, out._version)]

    def before_norm(module: nn.Module, args: tuple) -> None:
        if last and args[0] is last[0][1] and args[0]._version == last[0][2]:
            pairs.append((last[0][0], names[module]))
        last.clear()

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            hooks.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
        last.clear()
    return pairs
