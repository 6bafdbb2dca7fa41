"""The learning rate of each epoch: linear warm-up, then constant, cosine or cut on a plateau
of validation Dice; and when training stops early."""

from __future__ import annotations

import math
from typing import Any

import torch

from segpipe.config import TrainConfig


class EpochSchedule:
    """Sets the optimizer's lr before each epoch (stepped once per epoch, after validation).

    Epoch ``e`` (0-based) of ``W = train.warmup_epochs`` warm-up epochs runs at
    ``lr * (e + 1) / (W + 1)``; after them, ``none`` keeps ``lr``, ``cosine`` follows a half
    cosine from ``lr`` towards 0 over the remaining epochs, and ``plateau`` multiplies the rate
    by ``train.plateau_factor`` after ``train.plateau_patience`` epochs without a better
    validation Dice. Its state (:meth:`state_dict`) goes into the resume file.

    Args:
        optimizer: its param groups' current lr are the base rates.
        train: the ``train`` params.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, train: TrainConfig) -> None:
        self.optimizer = optimizer
        self.train = train
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.epoch = 0  # completed epochs
        self.plateau_scale = 1.0
        self.plateau_best = -math.inf
        self.plateau_bad = 0
        self._apply()

    def factor(self) -> float:
        """The multiple of ``train.lr`` for the next epoch."""
        t, e = self.train, self.epoch
        if e < t.warmup_epochs:
            return (e + 1) / (t.warmup_epochs + 1)
        if t.scheduler == "cosine":
            return 0.5 * (
                1 + math.cos(math.pi * (e - t.warmup_epochs) / (t.epochs - t.warmup_epochs))
            )
        if t.scheduler == "plateau":
            return self.plateau_scale
        return 1.0

    def step(self, val_score: float) -> None:
        """After an epoch: count it (``val_score``: its validation Dice, NaN ranked lowest)."""
        t = self.train
        if t.scheduler == "plateau" and self.epoch >= t.warmup_epochs:
            if val_score > self.plateau_best:
                self.plateau_best, self.plateau_bad = val_score, 0
            else:
                self.plateau_bad += 1
                if self.plateau_bad >= t.plateau_patience:
                    self.plateau_scale *= t.plateau_factor
                    self.plateau_bad = 0
        self.epoch += 1
        self._apply()

    def _apply(self) -> None:
        factor = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
        self._apply()


def stops_early(train: TrainConfig, *, best_epoch: int, done: int) -> bool:
    """Whether ``train.early_stopping`` ends training after ``done`` completed epochs, the best
    of which (by validation Dice) was ``best_epoch``."""
    patience = train.early_stopping
    return patience is not None and done - best_epoch >= patience
