"""What the evaluate stage's boundary metrics (HD95 and NSD) and post-processing cost per image,
on synthetic label maps of a given size.

    python -m benchmarks boundary --size 1000 --classes 2 --repeats 20

Each label map holds one blob per foreground class (an ellipse covering ~10% of the image)
and its prediction a shifted copy with a few speckles: a typical case, not the worst (a
prediction covering the whole image makes the bounding box the image). Prints the range of the
per-image time over the repeats.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from segpipe.evaluation.boundary import image_scores
from segpipe.evaluation.postprocess import PostprocessSearch, apply


def label_maps(size: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A truth and a prediction (size, size) uint8 with one ellipse per foreground class."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    truth = np.zeros((size, size), dtype=np.uint8)
    pred = np.zeros_like(truth)
    for c in range(1, classes):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.12, 0.2, 2) * size
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        truth[inside] = c
        shift = ((rows - cy - 0.02 * size) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        pred[shift] = c
        speckles = rng.integers(0, size, (20, 2))
        pred[speckles[:, 0], speckles[:, 1]] = c
    return pred, truth


def per_image_seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(args: argparse.Namespace) -> dict:
    """Time each step ``args.repeats`` times; print and return the ranges in milliseconds."""
    pred, truth = label_maps(args.size, args.classes)
    search = PostprocessSearch(args.classes)
    rules = {c: search.candidates[-1] for c in range(1, args.classes)}
    steps = {
        "boundary metrics (HD95 + NSD)": lambda: image_scores(pred, truth, args.classes, 2.0),
        "post-processing search (val)": lambda: search.update(pred, truth),
        "post-processing applied (test)": lambda: apply(pred, rules),
    }
    report = {}
    for name, fn in steps.items():
        ms = [1000 * t for t in per_image_seconds(fn, args.repeats)]
        report[name] = {"min_ms": min(ms), "median_ms": float(np.median(ms)), "max_ms": max(ms)}
        print(
            f"{name}: {min(ms):.1f}-{max(ms):.1f} ms per {args.size}x{args.size} image "
            f"(median {np.median(ms):.1f}), {args.classes} classes"
        )
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``boundary`` command's options."""
    p.add_argument("--size", type=int, default=1000, help="image side in pixels")
    p.add_argument("--classes", type=int, default=2, help="classes, background included")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
