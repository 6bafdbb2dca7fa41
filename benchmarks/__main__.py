"""``python -m benchmarks COMMAND [options]``: every benchmark of segpipe behind one command.

Each command is a module of this folder with ``add_arguments(parser)`` and
``main(args) -> dict`` (it prints its report and returns it; ``--json FILE`` also writes it).
``python -m benchmarks COMMAND --help`` lists a command's options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from segpipe.cli import exit_process, run_stage

COMMANDS = {
    "loader": ("bench", "training and inference: the pipeline vs a tutorial-style loader vs "
               "the model alone"),
    "predict": ("bench_predict", "the predict and evaluate paths (files to masks) beside the "
                "model alone"),
    "stages": ("bench_stages", "the split and cache stages on 1,000 and 10,000 pairs"),
    "backends": ("bench_backends", "inference backends: PyTorch, folded, OpenVINO, onnxruntime"),
    "profile": ("bench_profile", "where a training step's time goes, by kind of operator"),
    "recipes": ("recipes", "training recipes at an equal budget, as queued DVC experiments"),
    "val-images": ("val_images_cost", "what logging validation images costs per epoch"),
    "boundary": ("boundary_cost", "boundary metrics and post-processing per image, by size"),
    "startup": ("startup", "`segpipe predict` on one photo in a fresh process, beside the "
                "import floor"),
}  # fmt: skip
"""Command name: (module of ``benchmarks``, one line of help)."""


def build_parser() -> argparse.ArgumentParser:
    """The command tree: one subparser per entry of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of segpipe (run from the repository root).",
        epilog="`python -m benchmarks COMMAND --help` lists a command's options.",
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, about) in COMMANDS.items():
        module = importlib.import_module(f"benchmarks.{module_name}")
        sub = commands.add_parser(
            name,
            help=about,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.add_argument("--verbose", action="store_true", help="show full tracebacks")
        sub.set_defaults(module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m benchmarks COMMAND [ARGS...]``; returns the exit code (1 with one
    ``error:`` line for bad input)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def measure() -> None:
        report = args.module.main(args)
        if getattr(args, "json", None) is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    return run_stage(measure, verbose=args.verbose)


if __name__ == "__main__":
    exit_process(main())
