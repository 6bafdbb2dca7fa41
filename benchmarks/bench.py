"""Throughput benchmark: the pipeline vs. a naive tutorial-style loader vs. the model alone.

    python -m benchmarks loader [--data DIR] [--image-size 256] [--batch-size 8]

All three modes train and run inference with the same model, resolution and batch size, through
the same loops (``segpipe.training.engine``); only the data source and the numeric settings differ:

- ``naive``: like the tutorial: PIL decode of the full-size file and albumentations resize in
  every ``__getitem__``, fp32, NCHW, ``num_workers=0``;
- ``pipeline``: segpipe's path: the cache stage's memory-mapped arrays, ``train.precision:
  auto`` and channels-last (the cache build time is reported separately: it is paid once);
- ``model``: the same training step and inference on tensors already in memory, the bound no
  data pipeline can beat.

Each mode runs in its own process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from segpipe.cli import exit_process
from segpipe.config import ModelConfig, SplitConfig, SyntheticConfig
from segpipe.data import cache
from segpipe.data.dataset import CachedDataset, SegmentationDataset, build_transform
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.data.tables import read_split
from segpipe.model.network import build_model
from segpipe.resources import peak_rss_mb
from segpipe.runtime import Runtime, reuse_freed_memory
from segpipe.training.engine import build_optimizer, evaluate_epoch, train_one_epoch
from segpipe.training.losses import build_loss

MODES = ("naive", "pipeline", "model")


def _timed_epochs(step, images_per_call: int, repeats: int) -> float:
    """Images per second over ``repeats`` calls of ``step`` after one warm-up call."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return images_per_call * repeats / (time.perf_counter() - start)


def run_mode(mode: str, splits_dir: Path, cache_dir: Path, args: argparse.Namespace) -> dict:
    """Train and inference throughput of one mode (runs inside its own process)."""
    torch.manual_seed(0)
    fast = mode != "naive"
    # segpipe's settings (train.precision: auto, channels-last) or the tutorial's (fp32, NCHW).
    runtime = Runtime.choose(
        "auto" if fast else "fp32", channels_last=fast, device=torch.device("cpu")
    )
    if fast:  # what the train and evaluate stages do; the tutorial-style loop does not
        reuse_freed_memory()
    model, optimizer = _model_and_optimizer(args.encoder, runtime, segpipe=fast)
    loss_fn = build_loss("bce", 2)
    n = args.batch_size * args.batches
    train_loader, eval_loader = _loaders(mode, splits_dir, cache_dir, args, n)

    def train_step() -> None:
        train_one_epoch(model, train_loader, loss_fn, optimizer, runtime, desc=mode)

    def eval_step() -> None:
        evaluate_epoch(
            model, eval_loader, loss_fn, runtime, num_classes=2, threshold=0.5, desc=mode
        )

    return {
        "mode": mode,
        "train_images_per_s": _timed_epochs(train_step, n, args.repeats),
        "eval_images_per_s": _timed_epochs(eval_step, n, args.repeats),
        "peak_rss_mb": peak_rss_mb(),
    }


def _model_and_optimizer(
    encoder: str, runtime: Runtime, *, segpipe: bool
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """segpipe's model (with its CPU fast paths) and fused Adam, or the tutorial's."""
    if segpipe:
        model = runtime.place(build_model(ModelConfig("Unet", encoder, None), 2))
        return model, build_optimizer("adam", model.parameters(), lr=1e-4, device=runtime.device)
    import segmentation_models_pytorch as smp

    model = smp.Unet(encoder, encoder_weights=None, classes=1)  # as smp builds it
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def _loaders(
    mode: str, splits_dir: Path, cache_dir: Path, args: argparse.Namespace, n: int
) -> tuple[Iterable, Iterable]:
    """The training and inference batches of ``n`` images each for ``mode``."""
    if mode == "model":  # tensors already in memory
        x = torch.randn(n, 3, args.image_size, args.image_size)
        y = (torch.rand(n, args.image_size, args.image_size) > 0.5).long()
        train = [
            (x[i : i + args.batch_size], y[i : i + args.batch_size])
            for i in range(0, n, args.batch_size)
        ]
        # As many images as the other modes' eval pass (n), in evaluate.batch_size batches.
        evaluation = [
            (x[i : i + args.eval_batch_size], y[i : i + args.eval_batch_size])
            for i in range(0, n, args.eval_batch_size)
        ]
        return train, evaluation
    augmented = build_transform(args.image_size, augment=True, seed=0)
    plain = build_transform(args.image_size, augment=False, seed=0)
    if mode == "naive":
        # The tutorial's loader: PIL decode of the full-size files and resize, every item.
        train_frame = read_split(splits_dir / "train.csv").head(n)
        rule = load_rule(splits_dir / RULE_FILE)
        train_set = SegmentationDataset(train_frame, augmented, rule)
        eval_set = SegmentationDataset(train_frame, plain, rule)
    else:
        images, masks = cache.cache_paths(cache_dir, "train")  # n images: prepare_data
        train_set = CachedDataset(images, masks, augmented)
        eval_set = CachedDataset(images, masks, plain)
    # The naive loader keeps the tutorial's 0 workers; the pipeline takes --num-workers.
    workers = args.num_workers if mode == "pipeline" else 0
    loader = {"num_workers": workers, "persistent_workers": workers > 0}
    return (
        DataLoader(train_set, args.batch_size, shuffle=True, **loader),
        DataLoader(eval_set, args.eval_batch_size, shuffle=False, **loader),
    )


def prepare_data(
    data: Path | None, work: Path, image_size: int, num_images: int, mask_suffix: str = ""
) -> float:
    """Split the benchmark data (a folder with images/ and masks/, or synthetic) and cache it.

    Returns:
        The seconds the cache build took.
    """
    from segpipe.data import split, synthetic

    if data is None:
        data = work / "synthetic"
        n = int(num_images / 0.8) + 2
        cfg = SyntheticConfig(seed=0, n_images=n, min_size=256, max_size=512, empty_fraction=0.1)
        synthetic.generate(data, cfg, seed=0)
    splits = work / "splits"
    split.run(
        SplitConfig(seed=0, val_fraction=0.1, test_fraction=0.1),
        0,
        data,
        splits,
        mask_suffix=mask_suffix,
    )
    for name, rows in (("train", num_images), ("val", 2), ("test", 2)):  # cache what is timed
        path = splits / f"{name}.csv"
        read_split(path).head(rows).to_csv(path, index=False)
    start = time.perf_counter()
    cache.run(splits, work / "cache", Geometry.squash(image_size), load_rule(splits / RULE_FILE))
    return time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.system()} {platform.release()}"
    )


def main(args: argparse.Namespace) -> dict:
    """Each mode in a process of its own on the same split and cache; prints the table."""
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
        work = Path(tmp)
        needed = args.batch_size * args.batches
        cache_seconds = prepare_data(args.data, work, args.image_size, needed, args.mask_suffix)
        results = {mode: _measure_in_child(mode, work, args) for mode in MODES}
    report = {
        "machine": machine(),
        "data": args.data.name if args.data else "built-in synthetic (256-512 px)",
        "encoder": args.encoder,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "images_per_pass": needed,
        "cache_build_seconds": round(cache_seconds, 2),
        "results": results,
        "ratios": {
            f"{kind}_pipeline_over_{base}": round(
                results["pipeline"][f"{kind}_images_per_s"] / results[base][f"{kind}_images_per_s"],
                3,
            )
            for kind in ("train", "eval")
            for base in ("naive", "model")
        },
    }
    print(format_report(report))
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``loader`` command's options (also those its child processes take)."""
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with images/ and masks/ (default: built-in synthetic data, 256-512 px)",
    )
    p.add_argument(
        "--mask-suffix", default="", help="masks/<stem><suffix>.<ext> (data.mask_suffix)"
    )
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="training batch (train.batch_size)")
    p.add_argument(
        "--eval-batch-size", type=int, default=16, help="inference batch (evaluate.batch_size)"
    )
    p.add_argument("--batches", type=int, default=6, help="batches per timed pass")
    p.add_argument("--repeats", type=int, default=2, help="timed passes after one warm-up pass")
    p.add_argument("--encoder", default="efficientnet-b3")
    p.add_argument(
        "--num-workers", type=int, default=0, help="pipeline DataLoader workers (train.num_workers)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


CHILD_FLAGS = (
    "image_size",
    "batch_size",
    "eval_batch_size",
    "batches",
    "repeats",
    "encoder",
    "num_workers",
)
"""The options a mode's child process runs with, passed on from the parent's."""


def _measure_in_child(mode: str, work: Path, args: argparse.Namespace) -> dict:
    """:func:`run_mode` in a process of its own, so that its peak memory is its own."""
    child = [sys.executable, "-m", "benchmarks.bench", mode, str(work)]
    for flag in CHILD_FLAGS:
        child += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def format_report(report: dict) -> str:
    """The results as a markdown table plus the ratios."""
    lines = [
        f"machine: {report['machine']}",
        f"data: {report['data']}; Unet/{report['encoder']} at {report['image_size']}px, "
        f"batch {report['batch_size']}, pipeline workers {report['num_workers']}, "
        f"{report['images_per_pass']} images per timed pass; "
        f"cache build (once): {report['cache_build_seconds']} s",
        "",
        "| mode | train images/s | eval images/s | peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for mode, r in report["results"].items():
        lines.append(
            f"| {mode} | {r['train_images_per_s']:.2f} | {r['eval_images_per_s']:.2f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    lines += [f"{name}: {value:.2f}" for name, value in report["ratios"].items()]
    return "\n".join(lines)


def _child(argv: list[str]) -> None:
    """``python -m benchmarks.bench MODE WORK [options]``: measure one mode, print JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=MODES)
    p.add_argument("work", type=Path)
    add_arguments(p)
    args = p.parse_args(argv)
    print(json.dumps(run_mode(args.mode, args.work / "splits", args.work / "cache", args)))


if __name__ == "__main__":
    _child(sys.argv[1:])
    exit_process(0)
