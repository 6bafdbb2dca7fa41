"""What a command costs before its work: `segpipe predict` on one photo in a fresh process,
beside the imports it cannot avoid (torch, and segmentation-models-pytorch, which imports timm,
torchvision and torch's compiler stack), each in a fresh process, in interleaved rounds.

    python -m benchmarks startup --model models/model.pt --photo PHOTO --rounds 5

The floor rows end their process as segpipe's commands do (see ``segpipe.cli.exit_process``),
and once without it: the garbage collector's last pass over torch's objects at exit.
Prints the median and range of each row's wall time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = "import torch, segmentation_models_pytorch"


def commands(model: Path, photo: Path, out: Path) -> dict[str, list[str]]:
    """Each row's command line."""
    py = sys.executable
    predict = ["predict", "--model", str(model), "--input", str(photo), "--output", str(out)]
    return {
        "python, nothing imported": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch, gc; gc.freeze()"],
        "import torch + smp": [py, "-c", f"{FLOOR}, gc; gc.freeze()"],
        "import torch + smp, plain exit": [py, "-c", FLOOR],
        "segpipe predict, one photo": [py, "-m", "segpipe", *predict, "--overwrite"],
    }


def main(args: argparse.Namespace) -> dict:
    """Run every row ``args.rounds`` times, interleaved; print and return each row's times."""
    with tempfile.TemporaryDirectory() as out:
        rows = commands(args.model, args.photo, Path(out))
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, command in rows.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - start)
    report = {}
    for name, times in seconds.items():
        report[name] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
        }
        print(f"{name:32s} {statistics.median(times):5.2f} s  ({min(times):.2f}-{max(times):.2f})")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``startup`` command's options."""
    p.add_argument("--model", type=Path, default=Path("models/model.pt"), help="checkpoint")
    p.add_argument("--photo", type=Path, required=True, help="the one photo to predict")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
