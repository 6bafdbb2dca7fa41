"""Ensembles: several checkpoints of the same classes and input geometry whose class
probabilities are averaged, then thresholded (one channel) or argmaxed (several) as one model's.

Each member first runs its own sliding windows and flip averaging (which average logits, see
:mod:`~segpipe.inference.tiling`); the members' probabilities are then averaged at the model's
input resolution (nnU-Net's rule) and turned back into logits (the logit of the mean sigmoid,
the log of the mean softmax), so that everything after the model (resizing back, thresholds,
probabilities out) is one model's code path. An ensemble of one is that model: its logits
pass through untouched, so its masks and probabilities are the model's byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from segpipe.errors import SegpipeError
from segpipe.files import require_inside
from segpipe.model.checkpoint import ModelSpec

MATCHED = ("classes", "image_size", "resize", "crop", "scale", "mean", "std")
"""The :class:`~segpipe.model.checkpoint.ModelSpec` fields every member must share: what the
outputs mean and how an image becomes the input all members are fed."""

PROBABILITY_EPS = 1e-6
"""Averaged sigmoid probabilities are kept in [eps, 1 - eps] before their logit, so no logit is
infinite (a bilinear resize of +-inf gives NaN); no threshold in (eps, 1 - eps) moves."""


def member_paths(
    ensemble: Sequence[str] | None, model_path: Path, folder: Path | None
) -> list[Path]:
    """The checkpoints the evaluate stage scores: ``model_path`` without ``evaluate.ensemble``,
    else the files it lists, each ``model_path`` itself or below ``folder`` (the folder the
    stage depends on in dvc.yaml).

    Raises:
        SegpipeError: naming ``evaluate.ensemble`` and a file outside ``folder``.
    """
    if ensemble is None:
        return [model_path]
    return [
        Path(name)
        if Path(name).resolve() == Path(model_path).resolve()
        else require_inside(name, folder, "evaluate.ensemble")
        for name in ensemble
    ]


def check_members(members: Sequence[tuple[Path, ModelSpec]]) -> None:
    """Refuse members that differ from the first in any field of :data:`MATCHED`, or a file
    given twice (it would count double).

    Raises:
        SegpipeError: one line naming both files and the field.
    """
    first_path, first = members[0]
    seen: set[Path] = set()
    for path, spec in members:
        if Path(path).resolve() in seen:
            raise SegpipeError(f"{path}: given twice as an ensemble member; list each model once")
        seen.add(Path(path).resolve())
        for field in MATCHED:
            mine, theirs = getattr(first, field), getattr(spec, field)
            if mine != theirs:
                raise SegpipeError(
                    f"{first_path}, {path}: {field} differs ({_shown(mine)} vs {_shown(theirs)}); "
                    "an ensemble's models need the same classes and input geometry"
                )


def _shown(value: object) -> str:
    """A field's value as params.yaml writes it (lists, not tuples)."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def average_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits (N, C', H, W) whose sigmoid (one channel) or softmax (several) is the mean of
    the members' probabilities; one member's logits are returned as they are.

    Shape:
        each of ``logits``: (N, C', H, W) float32, from the members in order.
    """
    if len(logits) == 1:
        return logits[0]
    binary = logits[0].shape[1] == 1
    total = torch.zeros_like(logits[0])
    for member in logits:
        total += torch.sigmoid(member) if binary else torch.softmax(member, dim=1)
    mean = total / len(logits)
    if binary:
        return torch.logit(mean, eps=PROBABILITY_EPS)
    return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
