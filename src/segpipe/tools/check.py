"""The check stage and command: validate a params file as every stage reads it.

    segpipe check [--params params.yaml]      (the check stage: python stages/check.py)

Every stage validates the whole file when it runs, but DVC runs a stage only when the
parameters it lists change: a misspelt section added by hand (``modle:``) would go unnoticed.
The check stage depends on the whole file, so ``dvc repro`` reports it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segpipe.cli import parser, run_stage
from segpipe.config import Params, load_params
from segpipe.data.augment import build_augmentations
from segpipe.model.network import check_model_names

log = logging.getLogger(__name__)


def run(path: Path) -> Params:
    """Load ``path`` strictly and check the model's architecture and encoder names and the
    ``train.augment`` transforms.

    Raises:
        SegpipeError: the first problem, naming the key.
    """
    params = load_params(path)
    check_model_names(params.model)
    # Transforms run on crops with train.crop, else on the image_size square, as in training.
    build_augmentations(params.train.augment, params.train.crop or params.train.image_size)
    log.info("%s: valid", path)
    return params


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's arguments: only the ones every stage has (``--params``, ``--verbose``)."""
    p = parser("Check params.yaml: every key, type and range, the model and transform names.")
    p.prog = prog or p.prog
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command on ``argv`` (default: the process's arguments); returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run_stage(lambda: run(Path(args.params)), verbose=args.verbose)
