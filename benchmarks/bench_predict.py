"""The predict benchmark: files on disk to mask files written, beside the model-only bound.

    python -m benchmarks predict [--data DIR] [--images 150] [--image-size 256] \\
        [--eval-batch-size 16]

In one process, in interleaved rounds: the model-only inference bound (the checkpoint's
model on tensors already in memory), then for each variant the ``predict`` command's path
(:func:`segpipe.commands.predict.run`) and the evaluate stage's scoring path
(:func:`segpipe.evaluation.evaluate.score_test_split`) on full-size photos. Each path's
steady-state speed is ``(N - 1) / (t_N - t_1)``: the wall time of a one-photo run (model
load, warm-up) is subtracted from that of the N-photo run. The model has random weights: the
speed of a network does not depend on what it learnt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from benchmarks.flops import forward_flops
from segpipe.cli import exit_process
from segpipe.commands import predict
from segpipe.config import EvaluateConfig, ModelConfig, SplitConfig, SyntheticConfig
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.data import split, synthetic
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.data.tables import read_split
from segpipe.evaluation import evaluate
from segpipe.inference.predictor import Predictor
from segpipe.inference.stream import IO_THREADS
from segpipe.model.checkpoint import Checkpoint, ModelSpec, save_checkpoint
from segpipe.model.network import build_model
from segpipe.resources import peak_rss_mb
from segpipe.runtime import reuse_freed_memory

VARIANTS = {
    "serial": {"threads": 0, "decode": "exact", "backend": "torch"},
    "threads": {"threads": IO_THREADS, "decode": "exact", "backend": "torch"},
    "reduced": {"threads": IO_THREADS, "decode": "reduced", "backend": "torch"},
    "openvino": {"threads": IO_THREADS, "decode": "exact", "backend": "openvino"},
}
"""What is compared: everything one step after another; reading and writing on a thread
pool beside the model; that plus reduced-scale JPEG decoding; and threads with the forward
pass run by OpenVINO."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """The files one run predicts: a checkpoint, the photos (one, and all N) and the split
    rows (image, mask) that the evaluate path scores."""

    model: Path
    one: Path
    photos: Path
    rows: pd.DataFrame
    rule_dir: Path
    work: Path


def prepare(data: Path, work: Path, args: argparse.Namespace) -> Workload:
    """Split ``data`` (images/ and masks/), link its first ``args.images`` photos into one
    folder (and the first into another) and write a random-weight checkpoint."""
    splits = work / "splits"
    split.run(SplitConfig(seed=0, val_fraction=0.1, test_fraction=0.1), 0, data, splits)
    rows = first_rows(splits, args.images)
    one, photos = work / "one", work / "photos"
    for folder, chosen in ((one, rows.head(1)), (photos, rows)):
        folder.mkdir()
        for image in chosen["image"]:
            (folder / Path(image).name).symlink_to(Path(image).resolve())
    torch.manual_seed(0)
    model_path = work / "model.pt"
    spec = ModelSpec(
        arch="Unet",
        encoder=args.encoder,
        classes=("background", "foreground"),
        image_size=args.image_size,
        precision="auto",
        channels_last=True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    model = build_model(ModelConfig("Unet", args.encoder, None), 2)
    record = Checkpoint(model_config=spec, epoch=0, val_dice=0.0, train_images_per_s=0.0)
    save_checkpoint(model_path, model, record)
    return Workload(model_path, one, photos, rows, splits, work)


def first_rows(splits: Path, n: int) -> pd.DataFrame:
    """The first ``n`` pairs by stem, over all three splits."""
    rows = pd.concat([read_split(splits / f"{name}.csv") for name in ("train", "val", "test")])
    return rows.sort_values("stem").head(n).reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class Speed:
    """Images per second of wall time, and milliseconds of CPU time (all threads) per image:
    the second is what a path costs even when other processes share the cores."""

    images_per_s: float
    cpu_ms_per_image: float


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def model_bound(predictor: Predictor, batch_size: int, batches: int) -> Speed:
    """The model alone on in-memory batches, after one warm-up batch."""
    size = predictor.image_size
    x = torch.randn(batch_size, 3, size, size)
    predictor.logits(x)

    def run() -> None:
        for _ in range(batches):
            predictor.logits(x)

    wall, cpu = _timed(run)
    n = batch_size * batches
    return Speed(n / wall, cpu / n * 1000)


def steady(run_on: Callable[[bool], None], n: int) -> Speed:
    """``run_on(all_photos)`` at steady state: ``(n - 1) / (t_n - t_1)``, for wall and CPU time."""
    one_wall, one_cpu = _timed(lambda: run_on(False))
    wall, cpu = _timed(lambda: run_on(True))
    return Speed((n - 1) / max(wall - one_wall, 1e-9), (cpu - one_cpu) / (n - 1) * 1000)


def predict_speed(load: Workload, args: argparse.Namespace, variant: dict) -> Speed:
    """The predict command's steady-state images/s for one variant."""

    def run_on(everything: bool) -> None:
        predict.run(
            load.model,
            load.photos if everything else load.one,
            load.work / "out",
            threshold=0.5,
            batch_size=args.eval_batch_size,
            overwrite=True,
            **variant,
        )

    return steady(run_on, len(load.rows))


def evaluate_speed(load: Workload, args: argparse.Namespace, variant: dict) -> Speed:
    """The evaluate stage's scoring path's steady-state images/s for one variant."""
    cfg = EvaluateConfig(
        threshold=0.5,
        batch_size=args.eval_batch_size,
        include_background=False,
        tile=None,
        overlap=0.0,
        tta="none",
        decode=variant["decode"],
        backend=variant["backend"],
        boundary_tolerance=2.0,
        postprocess="none",
        ensemble=None,
    )
    rule = load_rule(load.rule_dir / RULE_FILE)

    def run_on(everything: bool) -> None:
        predictor = Predictor(load.model, 0.5, device="cpu", backend=variant["backend"])
        frame = load.rows if everything else load.rows.head(1)
        out = load.work / "eval_out"
        evaluate.score_test_split(predictor, frame, rule, cfg, out, threads=variant["threads"])

    return steady(run_on, len(load.rows))


def run_rounds(load: Workload, args: argparse.Namespace) -> dict:
    """Interleaved rounds of bound, predict and evaluate per variant (in this process)."""
    reuse_freed_memory()
    predictor = Predictor(load.model, 0.5, device="cpu")
    rounds = []
    compiled = None
    if "openvino" in args.variants:  # the bound of the OpenVINO variant's forward pass
        compiled = Predictor(load.model, 0.5, device="cpu", backend="openvino")
    for _ in range(args.repeats):
        result = {"model": model_bound(predictor, args.eval_batch_size, args.batches)}
        if compiled is not None:
            result["model_openvino"] = model_bound(compiled, args.eval_batch_size, args.batches)
        for name in args.variants:
            result[f"predict_{name}"] = predict_speed(load, args, VARIANTS[name])
            result[f"evaluate_{name}"] = evaluate_speed(load, args, VARIANTS[name])
        rounds.append({k: dataclasses.asdict(v) for k, v in result.items()})
    flops = forward_flops(predictor.model, predictor.image_size)
    return {"rounds": rounds, "forward_flops": flops, "peak_rss_mb": peak_rss_mb()}


def one_photo_wall(load: Workload) -> float:
    """Seconds of ``segpipe predict`` on one photo in a fresh process, imports included."""
    out = load.work / "one_out"
    command = [sys.executable, "-m", "segpipe", "predict", "--model", str(load.model)]
    command += ["--input", str(load.one), "--output", str(out), "--overwrite"]
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True)
    return time.perf_counter() - start


def report(load: Workload, measured: dict, wall: float, args: argparse.Namespace) -> dict:
    """Rounds with their predict/bound and evaluate/bound ratios, FLOPs and FLOP/s."""
    rounds = measured["rounds"]
    for r in rounds:
        bound = r["model"]
        for name in args.variants:
            for path in ("predict", "evaluate"):
                speed = r[f"{path}_{name}"]
                speed["over_model"] = speed["images_per_s"] / bound["images_per_s"]
                speed["cpu_over_model"] = bound["cpu_ms_per_image"] / speed["cpu_ms_per_image"]
    flops = measured["forward_flops"]
    return {
        "images": len(load.rows),
        "image_size": args.image_size,
        "encoder": args.encoder,
        "batch_size": args.eval_batch_size,
        "rounds": rounds,
        "forward_gflops_per_image": flops / 1e9,
        "model_gflop_per_s": [r["model"]["images_per_s"] * flops / 1e9 for r in rounds],
        "one_photo_wall_s": wall,
        "peak_rss_mb": measured["peak_rss_mb"],
    }


def format_report(result: dict, variants: list[str]) -> str:
    """One row per round and path: images/s and CPU ms per image, each beside the bound's."""
    lines = [
        f"{result['images']} photos, Unet/{result['encoder']} at {result['image_size']} px, "
        f"batch {result['batch_size']}; steady state",
        "",
        "| round | path | images/s | / model-only | CPU ms per image | model-only CPU / path CPU |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["rounds"], 1):
        bound = r["model"]
        cells = [f"{bound['images_per_s']:.2f}", "1", f"{bound['cpu_ms_per_image']:.0f}", "1"]
        lines.append(f"| {i} | model-only | " + " | ".join(cells) + " |")
        if "model_openvino" in r:
            ov = r["model_openvino"]
            cells = [
                f"{ov['images_per_s']:.2f}",
                f"{ov['images_per_s'] / bound['images_per_s']:.2f}",
            ]
            cells += [f"{ov['cpu_ms_per_image']:.0f}", ""]
            lines.append(f"| {i} | model-only, openvino | " + " | ".join(cells) + " |")
        for name in variants:
            for path in ("predict", "evaluate"):
                s = r[f"{path}_{name}"]
                cells = [f"{s['images_per_s']:.2f}", f"{s['over_model']:.2f}"]
                cells += [f"{s['cpu_ms_per_image']:.0f}", f"{s['cpu_over_model']:.2f}"]
                lines.append(f"| {i} | {path} {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"forward pass: {result['forward_gflops_per_image']:.2f} GFLOP per image; model-only "
        f"{', '.join(f'{g:.0f}' for g in result['model_gflop_per_s'])} GFLOP/s",
        f"one photo, fresh process: {result['one_photo_wall_s']:.2f} s wall; "
        f"peak RSS {result['peak_rss_mb']:.0f} MiB",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    """Photos of ``--data`` (default: synthetic ones at photo-like sizes) in a temporary folder;
    prepare, measure in a child process, and return the report (also printed)."""
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:  # photo-like sizes: what the predict path is for
            data = work / "synthetic"
            cfg = SyntheticConfig(
                seed=0, n_images=args.images, min_size=600, max_size=1400, empty_fraction=0.1
            )
            synthetic.generate(data, cfg, seed=0)
        return measure(data, work, args)


def measure(data: Path, work: Path, args: argparse.Namespace) -> dict:
    """Prepare ``data`` in ``work``, measure in a child process, print and return the report."""
    load = prepare(data, work, args)
    child = [sys.executable, "-m", "benchmarks.bench_predict", str(work)]
    settings = {k: getattr(args, k) for k in ("images", "image_size", "encoder")}
    settings |= {k: getattr(args, k) for k in ("eval_batch_size", "batches", "repeats")}
    (work / "settings.json").write_text(json.dumps({**settings, "variants": args.variants}))
    out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    result = report(load, measured, one_photo_wall(load), args)
    print(format_report(result, args.variants))
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``predict`` command's options."""
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with images/ and masks/ (default: built-in synthetic photos, 600-1400 px)",
    )
    p.add_argument("--images", type=int, default=150, help="photos per run")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["serial", "threads", "reduced"],
        choices=list(VARIANTS),
        help="the paths compared",
    )
    p.add_argument("--image-size", type=int, default=256, help="the model's input size")
    p.add_argument("--eval-batch-size", type=int, default=16, help="evaluate.batch_size")
    p.add_argument("--batches", type=int, default=6, help="batches of the model-only bound")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--encoder", default="efficientnet-b3")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


def _child(work: Path) -> None:
    """The measuring process: its allocator settings and peak memory are its own."""
    args = argparse.Namespace(**json.loads((work / "settings.json").read_text()))
    rows = first_rows(work / "splits", args.images)
    load = Workload(work / "model.pt", work / "one", work / "photos", rows, work / "splits", work)
    print(json.dumps(run_rounds(load, args)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
    exit_process(0)
