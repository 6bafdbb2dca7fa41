"""The split and cache benchmark: both stages on 1,000 and 10,000 pairs, one thread vs. several.

    python -m benchmarks stages [--data DIR] [--counts 1000 10000] [--threads 0 2] [--repeats 2]

The pairs of ``--data`` (images/ and masks/; default the synthetic source at photo-like
sizes) are linked over and over, under new names, into a folder of N pairs: the files are
real photos, and the reading is the stages' own (the OS caches the repeated files, so this
measures decoding, not the disk). For each N, in interleaved rounds, each thread count runs the
split stage's :func:`~segpipe.data.split.run` and the cache stage's
:func:`~segpipe.data.cache.run` in a fresh process of its own, so that its peak memory is its
own. Reported: seconds per 1,000 pairs and peak RSS, and whether every thread count wrote the
same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segpipe.cli import exit_process
from segpipe.config import SplitConfig
from segpipe.data import split
from segpipe.resources import peak_rss_mb

SPLIT = SplitConfig(seed=0, val_fraction=0.1, test_fraction=0.1)


def replicate(data: Path, n: int, out: Path, mask_suffix: str = "") -> Path:
    """A folder ``out`` with images/ and masks/ of ``n`` pairs: links to the pairs of ``data``
    in turn, the k-th round's named ``r<k>_<stem>``."""
    pairs = split.pair_files(data, mask_suffix=mask_suffix)
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True)
    for i in range(n):
        stem, image, mask = pairs.iloc[i % len(pairs)][["stem", "image", "mask"]]
        name = f"r{i // len(pairs):03d}_{stem.replace('/', '_')}"
        image, mask = Path(image), Path(mask)
        (out / "images" / f"{name}{image.suffix}").symlink_to(image.resolve())
        (out / "masks" / f"{name}{mask_suffix}{mask.suffix}").symlink_to(mask.resolve())
    return out


def digest(folder: Path) -> str:
    """One hash of every file's name and bytes under ``folder``."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def measure(stage: str, data: Path, out: Path, threads: int, args: argparse.Namespace) -> dict:
    """Run one stage in this process; its seconds (imports not counted), pairs handled and
    peak RSS."""
    if stage == "split":
        start = time.perf_counter()
        counts = split.run(SPLIT, 0, data, out, mask_suffix=args.mask_suffix, threads=threads)
    else:
        from segpipe.data import cache
        from segpipe.data.geometry import Geometry
        from segpipe.data.masks import RULE_FILE, load_rule

        start = time.perf_counter()
        rule = load_rule(data / RULE_FILE)
        counts = cache.run(data, out, Geometry.squash(args.image_size), rule, threads=threads)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs": sum(counts.values()), "peak_rss_mb": peak_rss_mb()}


def in_child(stage: str, data: Path, out: Path, threads: int, args: argparse.Namespace) -> dict:
    """:func:`measure` in a fresh process (its imports, threads and memory its own)."""
    command = [sys.executable, "-m", "benchmarks.bench_stages", stage, str(data), str(out)]
    command += [str(threads), str(args.image_size), args.mask_suffix]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} with {threads} threads failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_count(data: Path, n: int, work: Path, args: argparse.Namespace) -> dict:
    """Both stages at ``n`` pairs, each thread count in turn, ``args.repeats`` rounds."""
    raw = replicate(data, n, work / f"raw{n}", args.mask_suffix)
    rows: dict[str, list] = {}
    digests: dict[str, set[str]] = {"split": set(), "cache": set()}
    for _ in range(args.repeats):
        for threads in args.threads:
            for stage, source in (("split", raw), ("cache", work / f"splits{n}")):
                out = work / (f"splits{n}" if stage == "split" else f"cache{n}")
                result = in_child(stage, source, out, threads, args)
                rows.setdefault(f"{stage} threads={threads}", []).append(result)
                digests[stage].add(digest(out))
    return {"pairs": n, "runs": rows, "same_bytes": all(len(d) == 1 for d in digests.values())}


def format_report(result: dict) -> str:
    """A markdown table: per N, stage and thread count, seconds per 1,000 pairs and peak RSS."""
    lines = [
        f"data: {result['data']}; cache at {result['image_size']} px; "
        f"{result['repeats']} interleaved rounds (range over rounds)",
        "",
        "| pairs | stage | threads | s per 1,000 pairs | peak RSS MiB |",
        "|---:|---|---:|---:|---:|",
    ]
    for count in result["counts"]:
        for name, runs in count["runs"].items():
            stage, threads = name.split(" threads=")
            per = [r["seconds"] / r["pairs"] * 1000 for r in runs]
            rss = max(r["peak_rss_mb"] for r in runs)
            lines.append(
                f"| {count['pairs']} | {stage} | {threads} | {min(per):.1f}-{max(per):.1f} "
                f"| {rss:.0f} |"
            )
        lines.append(
            f"| {count['pairs']} | same bytes for every thread count | | "
            f"{'yes' if count['same_bytes'] else 'NO'} | |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    """Measure every count in a temporary folder; print the table."""
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
        return measure_counts(args.data, Path(tmp), args)


def measure_counts(data: Path | None, work: Path, args: argparse.Namespace) -> dict:
    """Every count (``work`` holds the linked folders and outputs)."""
    name = data.name if data is not None else "built-in synthetic (600-1400 px)"
    if data is None:
        from segpipe.config import SyntheticConfig
        from segpipe.data import synthetic

        data = work / "synthetic"
        cfg = SyntheticConfig(seed=0, n_images=200, min_size=600, max_size=1400, empty_fraction=0.1)
        synthetic.generate(data, cfg, seed=0)
    counts = [run_count(data, n, work, args) for n in args.counts]
    result = {"data": name, "image_size": args.image_size, "repeats": args.repeats}
    result["counts"] = counts
    print(format_report(result))
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="folder with images/ and masks/")
    p.add_argument("--mask-suffix", default="", help="data.mask_suffix of --data")
    p.add_argument("--counts", type=int, nargs="+", default=[1000, 10000], help="pairs per run")
    p.add_argument("--threads", type=int, nargs="+", default=[0, 2], help="thread counts")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--image-size", type=int, default=256, help="train.image_size of the cache")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


if __name__ == "__main__":
    stage, source, target, n_threads, size, suffix = sys.argv[1:7]
    settings = argparse.Namespace(image_size=int(size), mask_suffix=suffix)
    print(json.dumps(measure(stage, Path(source), Path(target), int(n_threads), settings)))
    exit_process(0)
