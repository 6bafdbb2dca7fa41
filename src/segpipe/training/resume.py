"""Resumable training: the state saved after every epoch, and when it may be reused.

After each completed epoch, training writes one folder per run with the model, optimizer,
scheduler and every RNG state (python, numpy, torch, the DataLoader's shuffling generator,
albumentations), the best checkpoint so far and the DVCLive history. A new run resumes from it
only if its fingerprint (the train stage's params, the bytes of the training data and of the
code the stage runs, and the library versions) matches, so an interrupted run finishes with
exactly the numbers an uninterrupted one would have; anything else starts over.

The folder is no output of the stage: DVC never caches or pushes it, the stage's outputs need
no ``persist`` (which would turn DVC's run cache off), and a finished run deletes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.core.composition import BaseCompose
from torch import nn

from segpipe.config import Params, to_dict
from segpipe.files import atomic_write, staged_dir, staging_leftovers
from segpipe.imports import import_closure
from segpipe.model.network import unwrap

log = logging.getLogger(__name__)

FORMAT = 1

STATE = "state.pt"
"""In a run's resume folder: the training state (``model.pt`` and ``live/`` sit beside it)."""

KEEP_OTHERS = 2
"""Resume folders of other interrupted runs kept besides the current one (the newest)."""


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """The objects whose state the resume file holds (besides the best epoch and the number
    of completed ones).

    Args:
        model: the model (or its DistributedDataParallel wrapper).
        optimizer, scheduler, scaler: what trains it; no scheduler or scaler is None (the
            scheduler: anything with ``state_dict`` and ``load_state_dict``, such as
            :class:`~segpipe.training.schedule.EpochSchedule`).
        augment: the training transform, whose random streams advance with every image.
        generator: the training DataLoader's shuffling generator.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    augment: A.Compose
    generator: torch.Generator


class Resume:
    """One run's resume folder, ``<root>/<first 16 hex digits of its fingerprint>``: the
    training state, the best checkpoint so far and the DVCLive history after the last
    completed epoch, replaced as a whole after every epoch.

    DVC deletes a stage's outputs before it runs it, so the checkpoint and the history of the
    completed epochs come back from this folder, not from the outputs. Runs with different
    parameters have folders of their own: going back to an interrupted run's parameters still
    resumes it.

    Args:
        root: the folder that holds the runs' resume folders.
        run_fingerprint: :func:`fingerprint` of this run.
    """

    def __init__(self, root: Path, run_fingerprint: str) -> None:
        self.root = Path(root)
        self.fingerprint = run_fingerprint
        self.dir = self.root / run_fingerprint[:16]

    @property
    def state_file(self) -> Path:
        return self.dir / STATE

    def restore(
        self, state: TrainingState, epochs: int, *, model_path: Path, live_dir: Path
    ) -> tuple[dict[str, float], int] | None:
        """Load the state saved for this run into ``state``, if it has epochs left to train,
        and put its best checkpoint and history back at ``model_path`` and ``live_dir``.

        Returns:
            The best validation metrics so far (with their ``epoch``) and the number of
            completed epochs; None when there is nothing to resume (start over).
        """
        saved = load(self.state_file, self.fingerprint)
        if saved is None or saved["epoch"] >= epochs:
            return None
        unwrap(state.model).load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        if state.scaler is not None:
            state.scaler.load_state_dict(saved["scaler"])
        restore_rng(saved["rng"], state.augment, state.generator)
        self._put_back(Path(model_path), Path(live_dir))
        log.info("resuming after epoch %d/%d from %s", saved["epoch"], epochs, self.dir)
        return saved["best"], saved["epoch"]

    def _put_back(self, model_path: Path, live_dir: Path) -> None:
        best, history = self.dir / "model.pt", self.dir / "live"
        if best.is_file():
            atomic_write(model_path, lambda tmp: shutil.copyfile(best, tmp))
        if history.is_dir():
            with staged_dir(live_dir) as staging:
                shutil.copytree(history, staging, dirs_exist_ok=True)

    def snapshot(
        self,
        state: TrainingState,
        *,
        epoch: int,
        best: dict[str, float],
        model_path: Path,
        live_dir: Path,
    ) -> None:
        """Save ``state`` after ``epoch`` completed epochs, with the best epoch so far, a copy
        of its checkpoint and the history; a kill meanwhile leaves the previous snapshot."""
        model = unwrap(state.model).state_dict()
        with staged_dir(self.dir) as staging:
            save(
                staging / STATE,
                {
                    "fingerprint": self.fingerprint,
                    "epoch": epoch,
                    "best": best,
                    "model": {k: v.detach().cpu() for k, v in model.items()},
                    "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict() if state.scheduler else None,
                    "scaler": state.scaler.state_dict() if state.scaler else None,
                    "rng": capture_rng(state.augment, state.generator),
                },
            )
            if Path(model_path).is_file():
                shutil.copyfile(model_path, staging / "model.pt")
            if Path(live_dir).is_dir():
                shutil.copytree(live_dir, staging / "live")
        self._prune_others()

    def finish(self) -> None:
        """Delete this run's folder, and what a kill during one of its snapshots left beside
        it (its staging folders): a finished run is never resumed."""
        for folder in (self.dir, *staging_leftovers(self.dir)):
            shutil.rmtree(folder, ignore_errors=True)

    def _prune_others(self) -> None:
        """Keep the newest :data:`KEEP_OTHERS` folders of other interrupted runs (each holds
        a model and its optimizer state), delete older ones."""
        others = [
            p
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p != self.dir
        ]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP_OTHERS:]:
            log.info("deleting the resume state of an older interrupted run: %s", old)
            shutil.rmtree(old, ignore_errors=True)


def fingerprint(
    params: Params, data_files: list[Path], code_files: list[Path] | None = None
) -> str:
    """A hash of what determines a training run: seed, classes, model and train params, the
    training data, the code (by default the train stage's import closure in segpipe) and the
    versions of the libraries that compute it."""
    digest = hashlib.sha256()
    config = {
        "seed": params.seed,
        "classes": list(params.data.classes),
        "model": to_dict(params.model),
        "train": to_dict(params.train),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
    digest.update(json.dumps(config, sort_keys=True).encode())
    code = import_closure("segpipe.training.train") if code_files is None else code_files
    for path in [*code, *data_files]:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


LIBRARIES = ("torch", "segmentation-models-pytorch", "timm", "albumentations", "numpy")
"""Libraries whose version changes the numbers a training epoch produces."""


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def capture_rng(transform: A.Compose, generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state, as tensors and plain Python values (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {
                "key": np_state["state"]["key"].tolist(),
                "pos": int(np_state["state"]["pos"]),
            },
        },
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
        "albumentations": [
            {"numpy": t.random_generator.bit_generator.state, "python": t.py_random.getstate()}
            for t in _rng_owners(transform)
        ],
    }


def _rng_owners(transform: Any) -> list[Any]:
    """The pipeline and every transform in it: each keeps its own generators."""
    if not isinstance(transform, BaseCompose):
        return [transform]
    return [transform] + [owner for child in transform.transforms for owner in _rng_owners(child)]


def restore_rng(state: dict[str, Any], transform: A.Compose, generator: torch.Generator) -> None:
    """Undo :func:`capture_rng`."""
    random.setstate(_tuples(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {
        "key": np.array(np_state["state"]["key"], dtype=np.uint32),
        "pos": np_state["state"]["pos"],
    }
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    for owner, saved in zip(_rng_owners(transform), state["albumentations"], strict=True):
        owner.random_generator.bit_generator.state = saved["numpy"]
        owner.py_random.setstate(_tuples(saved["python"]))


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples where a round trip may have produced lists."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def save(path: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically: a kill mid-write leaves the previous one intact."""
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load(path: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The saved state if it belongs to this exact run, else None (start over)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: never unpickle it unsafely
        log.warning("ignoring %s: not a readable resume state (%s)", path, type(e).__name__)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        log.warning("ignoring %s: unknown format", path)
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.info("params, data or code changed since %s was written: training from scratch", path)
        return None
    return state
