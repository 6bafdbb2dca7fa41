"""The check stage and command: validate a params file as every stage reads it.

    segpipe check [--params params.yaml]      (the check stage: python stages/check.py)

Every stage validates the whole file's keys, types and ranges when it runs, but DVC runs a stage
only when the parameters it lists change: a misspelt section added by hand (``modle:``) would go
unnoticed. The check stage depends on the whole file, so ``dvc repro`` reports it. It also runs
the checks of names that the modules using them own (model names, loss terms, transforms).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from segpipe.cli import parser, run_stage
from segpipe.config import DataConfig, Params, load_params
from segpipe.data.augment import build_augmentations
from segpipe.errors import SegpipeError
from segpipe.files import path_relation
from segpipe.model.network import check_model_names
from segpipe.training.losses import loss_terms

log = logging.getLogger(__name__)


def run(path: Path) -> Params:
    """Load ``path`` strictly and check the names its types cannot: the model's architecture
    and encoder, the ``train.augment`` transforms and the ``train.loss`` terms (each by the
    module that uses it); and that ``data.path`` is no pipeline output.

    Raises:
        SegpipeError: the first problem, naming the key.
    """
    params = load_params(path)
    check_model_names(params.model)
    # Transforms run on crops with train.crop, else on the image_size square, as in training.
    build_augmentations(params.train.augment, params.train.crop or params.train.image_size)
    loss_terms(params.train.loss, params.data.num_classes)
    check_data_path(params.data, Path(path).parent / "dvc.yaml")
    log.info("%s: valid", path)
    return params


def check_data_path(data: DataConfig, dvc_yaml: Path) -> None:
    """The folder source's ``data.path`` must lie apart from every output of the pipeline
    (``dvc.yaml`` beside the params file, if there is one): a stage replaces its output, so a
    dataset in ``data/imported`` would be deleted by the download stage it feeds. DVC itself only
    says "Same item(s) are defined as both a dependency and an output". ``data/raw`` is no
    output: the error suggests it as the place for the user's own dataset.

    Raises:
        SegpipeError: naming ``data.path``, the output and its stage, and the fix.
    """
    if data.source != "folder" or not data.path.strip() or not dvc_yaml.is_file():
        return
    try:
        stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
        outs = [
            (name, next(iter(out)) if isinstance(out, dict) else str(out))
            for name, stage in stages.items()
            for out in stage.get("outs", [])
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return  # not the pipeline's file: DVC reports it
    root = dvc_yaml.parent  # DVC runs every stage here: relative paths start from it
    for stage, out in outs:
        if "${" in out:
            continue
        relation = path_relation(root / data.path, root / out)
        if relation is not None:
            raise SegpipeError(
                f"data.path: {data.path} {relation} {out}, the output of the {stage} stage "
                f'({dvc_yaml.name}), which that stage replaces, so DVC refuses it ("Same item(s) '
                'are defined as both a dependency and an output" or "overlaps"); move the '
                "dataset to a folder no stage writes, such as data/raw/<name> (the place for "
                "your own files), and set data.path to it"
            )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's arguments: only the ones every stage has (``--params``, ``--verbose``)."""
    p = parser("Check params.yaml: every key, type and range, the model and transform names.")
    p.prog = prog or p.prog
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command on ``argv`` (default: the process's arguments); returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    return run_stage(lambda: run(Path(args.params)), verbose=args.verbose)
