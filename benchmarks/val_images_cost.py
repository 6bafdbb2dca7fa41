"""What logging the validation images (train.val_images_every: 1) costs, per epoch, against the
epoch itself (training + validation + the images), on the default settings.

    python -m benchmarks val-images --epochs 3 --runs 2 [--params params.yaml]

The default data (synthetic) is built once in a temporary folder; each run trains from scratch.
Prints one line per epoch and the range of the share over all epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segpipe.config import load_params
from segpipe.data import cache, download, split
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.training import train, val_images


def timed(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    return wrapper


def main(args: argparse.Namespace) -> dict:
    """Train ``args.runs`` times from scratch; print and return each epoch's share."""
    params = load_params(Path(args.params))
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, epochs=args.epochs, val_images_every=1)
    )
    epochs: list[float] = []
    grids: list[float] = []
    train._epoch = timed(train._epoch, epochs)
    val_images.log_grid = timed(val_images.log_grid, grids)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        download.run(params.data, params.seed, root / "raw")
        split.run(params.split, params.seed, root / "raw", root / "splits")
        rule = load_rule(root / "splits" / RULE_FILE, params.data)
        cache.run(root / "splits", root / "cache", Geometry.from_train(params.train), rule)
        for run in range(args.runs):
            train.run(params, root / "cache", root / f"model{run}.pt", root / f"live{run}")
    shares = [g / e for g, e in zip(grids, epochs, strict=True)]
    for i, (g, e) in enumerate(zip(grids, epochs, strict=True)):
        print(
            f"epoch {i % args.epochs + 1} run {i // args.epochs + 1}: images {g:.3f} s of {e:.1f} s"
        )
    print(f"share of epoch time: {min(shares):.2%} .. {max(shares):.2%}")
    return {"epoch_seconds": epochs, "images_seconds": grids, "shares": shares}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``val-images`` command's options."""
    p.add_argument("--params", default="params.yaml", help="the parameters file")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
