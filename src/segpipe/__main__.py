"""The ``segpipe`` command (also ``python -m segpipe``): ``segpipe predict|export|check|compare``.

Each subcommand is the ``main`` of its module (:mod:`segpipe.commands.predict`, ...; ``check``
is the check stage's :mod:`segpipe.check`), imported only when it runs: ``segpipe check`` loads
no ONNX and ``segpipe --help`` no torch. No pipeline stage imports this module, so a stage depends
only on the code it runs (see dvc.yaml).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from segpipe import __version__

COMMANDS = {
    "predict": "masks for new images with a trained checkpoint",
    "export": "ONNX export of a checkpoint, checked against PyTorch in onnxruntime",
    "check": "validate a params.yaml (every key, type and range, model names)",
    "compare": "runs against a baseline: paired bootstrap intervals and verdicts",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level arguments: the command's name, and ``--help`` and ``--version``."""
    listing = "\n".join(f"  {name:<9}{about}" for name, about in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="segpipe",
        description="Commands of segpipe, the DVC image-segmentation pipeline.",
        epilog=f"commands:\n{listing}\n\n`segpipe COMMAND --help` lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"segpipe {__version__}")
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``segpipe COMMAND [ARGS...]`` (default: the process's arguments); returns the exit
    code of the command, or exits with argparse's usage error for a bad or missing name."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the first word is this parser's: the rest, options included, is the command's.
    name = build_parser().parse_args(argv[:1]).command
    tool = importlib.import_module(
        "segpipe.check" if name == "check" else f"segpipe.commands.{name}"
    )
    return tool.main(argv[1:], prog=f"segpipe {name}")


def run() -> NoReturn:
    """The ``segpipe`` console script (and ``python -m segpipe``): :func:`main` in a process
    of its own, ended by :func:`~segpipe.cli.exit_process`."""
    from segpipe.cli import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
