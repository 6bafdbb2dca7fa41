"""Where a training step's time goes: torch's profiler on the model-only step at two sizes.

    python -m benchmarks profile [--sizes 128 256] [--batch-size 8] [--batches 4]

The step is the one ``python -m benchmarks loader`` times in its ``model`` mode (segpipe's
training loop on tensors already in memory: bf16 autocast where native, channels-last, fused
Adam). For each
size, after one warm-up epoch, ``--batches`` steps run under ``torch.profiler``; the report
groups the operators' self CPU time into kinds (convolutions forward and backward,
depthwise ones apart, batch norm, activations, pooling, the optimizer, ...) in ms per image,
so the sizes can be compared kind by kind: what does not shrink with the pixels is overhead.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.flops import forward_flops
from segpipe.runtime import Runtime, reuse_freed_memory
from segpipe.training.engine import train_one_epoch
from segpipe.training.losses import build_loss

KINDS = (
    ("convolution backward", ("convolution_backward", "mkldnn_convolution_backward")),
    ("convolution", ("convolution", "conv2d", "mkldnn_convolution")),
    ("batch norm", ("batch_norm",)),
    ("activation (SiLU, ReLU, sigmoid)", ("silu", "relu", "sigmoid", "threshold_backward")),
    ("pooling and upsampling", ("pool", "upsample", "interpolate")),
    ("elementwise (mul, add, cat, copy)", ("mul", "add", "cat", "copy_", "fill_", "zero_")),
    ("optimizer", ("_fused_adam", "adam")),
    ("layout and casts", ("to", "contiguous", "clone", "empty", "_to_copy")),
)
"""Operator-name fragments per kind, first match wins (checked on the lower-cased name)."""


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return "other"


def profile_size(size: int, args: argparse.Namespace) -> dict:
    """ms per image by kind of operator, and wall ms per image, for one size."""
    from benchmarks.bench import _model_and_optimizer

    torch.manual_seed(0)
    runtime = Runtime.choose("auto", channels_last=True, device=torch.device("cpu"))
    model, optimizer = _model_and_optimizer(args.encoder, runtime, segpipe=True)
    loss_fn = build_loss("bce", 2)
    n = args.batch_size * args.batches
    x = torch.randn(n, 3, size, size)
    y = (torch.rand(n, size, size) > 0.5).long()
    step = args.batch_size
    batches = [(x[i : i + step], y[i : i + step]) for i in range(0, n, step)]

    def epoch() -> None:
        train_one_epoch(model, batches, loss_fn, optimizer, runtime, desc=f"{size}px")

    epoch()  # warm-up: allocator, oneDNN primitive caches
    start = time.perf_counter()
    epoch()
    wall_ms = (time.perf_counter() - start) / n * 1000
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch()
    by_kind: collections.Counter[str] = collections.Counter()
    top: collections.Counter[str] = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith("ProfilerStep") or "autograd::engine" in event.key:
            continue
        ms = event.self_cpu_time_total / 1000 / n
        by_kind[kind_of(event.key)] += ms
        top[event.key] += ms
    flops = forward_flops(model, size)
    return {
        "size": size,
        "wall_ms_per_image": wall_ms,
        "profiled_ms_per_image": sum(by_kind.values()),
        "by_kind": dict(by_kind.most_common()),
        "top_ops": dict(top.most_common(12)),
        "train_gflop_per_image": 3 * flops / 1e9,
        "achieved_gflop_per_s": 3 * flops / 1e9 / (wall_ms / 1000),
        "calls_per_image": sum(e.count for e in prof.key_averages()) / n,
    }


def main(args: argparse.Namespace) -> dict:
    reuse_freed_memory()
    sizes = [profile_size(size, args) for size in args.sizes]
    result = {"encoder": args.encoder, "batch_size": args.batch_size, "sizes": sizes}
    print(format_report(result))
    return result


def format_report(result: dict) -> str:
    sizes = result["sizes"]
    head = " | ".join(f"{s['size']} px ms/image | share" for s in sizes)
    lines = [
        f"Unet/{result['encoder']} training step, batch {result['batch_size']}, "
        f"{torch.get_num_threads()} threads; self CPU time by kind of operator",
        "",
        f"| kind | {head} |",
        "|---|" + "---:|---:|" * len(sizes),
    ]
    kinds = list(dict.fromkeys(k for s in sizes for k in s["by_kind"]))
    for kind in kinds:
        cells = []
        for s in sizes:
            ms = s["by_kind"].get(kind, 0.0)
            cells += [f"{ms:.1f}", f"{ms / s['profiled_ms_per_image']:.0%}"]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    for label, key in (("profiled total", "profiled_ms_per_image"), ("wall", "wall_ms_per_image")):
        cells = [f"{s[key]:.1f} | " for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in sizes:
        lines.append(
            f"{s['size']} px: {s['train_gflop_per_image']:.2f} GFLOP per image (3x forward), "
            f"{s['achieved_gflop_per_s']:.0f} GFLOP/s; {s['calls_per_image']:.0f} operator "
            f"calls per image"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=4, help="profiled steps per size")
    p.add_argument("--encoder", default="efficientnet-b3")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
