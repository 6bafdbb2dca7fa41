"""Self-describing checkpoints: the weights plus one typed record of what rebuilds and runs them.

The train stage builds the record once; every reader (evaluate, predict, export, the model card)
gets it back from :func:`load_checkpoint` as the same dataclass, read by one strict function that
names the file and the field at fault. The file holds plain types and tensors only, so it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from segpipe.config import (
    ModelConfig,
    Params,
    Precision,
    Reader,
    Resize,
    Strictness,
    check_classes,
    check_geometry,
    read_strict,
)
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.data.geometry import Geometry
from segpipe.errors import SegpipeError
from segpipe.files import atomic_write
from segpipe.model.network import build_model, encoder_normalisation, unwrap
from segpipe.model.weights import describe_mismatch
from segpipe.runtime import Environment

FORMAT = 1
"""The checkpoint layout's version, stored as ``format``."""

MIN_STD = 0.01
"""The smallest per-channel ``std`` a checkpoint may hold (pixels in 0..1; timm's smallest is
0.143): below it inputs reach +-100 and masks come out wrong without an error."""

REWRITE_HINT = "the train stage writes valid values; use the checkpoint it wrote"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What rebuilds the network and feeds it: the checkpoint's ``model_config``.

    Args:
        arch, encoder: the smp architecture and encoder names (``model.*``).
        classes: class names in class-index order, background first (``data.classes``).
        image_size: the input size the model was trained at (``train.image_size``).
        precision, channels_last: how it ran in training (``train.*``); inference runs alike.
        mean, std: the per-channel (RGB, 0..1) normalisation the model was trained with (its
            encoder's, :func:`~segpipe.model.network.encoder_normalisation`).
        resize, crop, scale: its input geometry (``train.*``, see
            :class:`~segpipe.data.geometry.Geometry`). Checkpoints written before these
            fields existed load with their defaults: squashed to ``image_size``, as then.
    """

    arch: str
    encoder: str
    classes: tuple[str, ...]
    image_size: int
    precision: Precision
    channels_last: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: Resize = "squash"
    crop: int | None = None
    scale: float = 1.0

    @classmethod
    def from_params(cls, params: Params) -> ModelSpec:
        mean, std = encoder_normalisation(params.model)
        return cls(
            arch=params.model.arch,
            encoder=params.model.encoder,
            classes=tuple(params.data.classes),
            image_size=params.train.image_size,
            precision=params.train.precision,
            channels_last=params.train.channels_last,
            mean=mean,
            std=std,
            resize=params.train.resize,
            crop=params.train.crop,
            scale=params.train.scale,
        )

    @property
    def geometry(self) -> Geometry:
        """How images become this model's inputs."""
        return Geometry(
            resize=self.resize, image_size=self.image_size, crop=self.crop, scale=self.scale
        )

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std

    def to_dict(self) -> dict[str, Any]:
        """Plain types, in field order (as stored, and as export's metadata shows it)."""
        plain = dataclasses.asdict(self)
        return {**plain, **{k: list(plain[k]) for k in ("classes", "mean", "std")}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Everything a checkpoint holds besides its weights.

    Args:
        model_config: what rebuilds and runs the model.
        epoch: the epoch whose weights these are (the best by validation Dice).
        val_dice: that epoch's validation Dice, at the model's input size.
        train_images_per_s: that epoch's training speed.
        environment: the machine and libraries it was trained with (None in checkpoints
            written before it was recorded).
    """

    model_config: ModelSpec
    epoch: int
    val_dice: float
    train_images_per_s: float
    environment: Environment | None = None


def save_checkpoint(path: Path, model: nn.Module, checkpoint: Checkpoint) -> None:
    """Write the weights and ``checkpoint`` atomically, as plain types and tensors."""
    payload = {
        "format": FORMAT,
        "model_config": checkpoint.model_config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "epoch": checkpoint.epoch,
        "val_dice": checkpoint.val_dice,
        "train_images_per_s": checkpoint.train_images_per_s,
        "environment": checkpoint.environment and checkpoint.environment.to_dict(),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a model from a checkpoint alone (never touches the network).

    Returns:
        The model in eval mode on the CPU, and the checkpoint's record.

    Raises:
        SegpipeError: one line naming ``path`` for a missing, foreign, newer, corrupt,
            incomplete or inconsistent file, a value out of range (:func:`check_values`),
            damaged weights (:func:`check_weights`), or a training-resume state given where
            a checkpoint belongs.
    """
    payload = read_payload(path)
    checkpoint = read_record(path, payload)
    check_values(path, checkpoint)
    state = payload["state_dict"]
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise SegpipeError(f"{path}: not a complete segpipe checkpoint: no state_dict of tensors")
    check_weights(path, state)
    spec = checkpoint.model_config
    try:
        model = build_model(ModelConfig(spec.arch, spec.encoder, None), len(spec.classes))
    except SegpipeError as e:  # names a model.* param: say which file holds the bad name
        raise SegpipeError(f"{path}: its model_config cannot be built: {e}") from None
    problem = describe_mismatch(model.state_dict(), state, optional=set())
    if problem:
        raise SegpipeError(
            f"{path}: its weights do not fit its model_config ({spec.arch}, {spec.encoder}, "
            f"{len(spec.classes)} classes): {problem}; the file was altered or mixes two "
            "models, use the checkpoint the train stage wrote"
        )
    model.load_state_dict(state)
    return model.eval(), checkpoint


def check_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights that cannot give a meaningful mask: NaN or infinite values (a training
    run that diverged, a damaged file), or a batch norm's negative running variance.

    Raises:
        SegpipeError: naming ``path`` and the first tensor at fault.
    """
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue  # counters (num_batches_tracked)
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise SegpipeError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s) of "
                f"{tensor.numel()}: training diverged or the file is damaged; retrain (e.g. "
                "a lower train.lr) or use another checkpoint"
            )
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise SegpipeError(
                f"{path}: tensor {name!r} holds a negative variance: the file is damaged; "
                "use the checkpoint the train stage wrote"
            )


def check_values(path: Path, checkpoint: Checkpoint) -> None:
    """Every value of the record in its range, by the rules ``params.yaml`` follows where
    one exists (:mod:`segpipe.config`).

    Raises:
        SegpipeError: one line naming ``path`` and the field.
    """
    spec = checkpoint.model_config
    try:
        check_classes(spec.classes, "model_config.classes")
        check_geometry(spec.resize, spec.image_size, spec.crop, spec.scale, prefix="model_config.")
        _check_normalisation(spec)
        _check_record(checkpoint)
    except SegpipeError as e:
        raise SegpipeError(f"{path}: {e} ({REWRITE_HINT})") from None


def _check_normalisation(spec: ModelSpec) -> None:
    """Per-channel mean in [0, 1] and std in [MIN_STD, 1], as for pixels scaled to 0..1."""
    for i, value in enumerate(spec.mean):
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise SegpipeError(
                f"model_config.mean[{i}]: must be in [0, 1] (pixels scaled to 0..1), got {value}"
            )
    for i, value in enumerate(spec.std):
        if not MIN_STD <= value <= 1.0:
            raise SegpipeError(
                f"model_config.std[{i}]: must be in [{MIN_STD:g}, 1] (pixels scaled to 0..1), "
                f"got {value}"
            )


def _check_record(checkpoint: Checkpoint) -> None:
    """The training figures: an epoch count, a Dice (NaN: nothing to score) and a speed."""
    if checkpoint.epoch < 0:
        raise SegpipeError(f"epoch: must be >= 0, got {checkpoint.epoch}")
    dice = checkpoint.val_dice
    if not (math.isnan(dice) or 0.0 <= dice <= 1.0):
        raise SegpipeError(f"val_dice: must be in [0, 1] (or NaN), got {dice}")
    speed = checkpoint.train_images_per_s
    if not (math.isfinite(speed) and speed >= 0):
        raise SegpipeError(f"train_images_per_s: must be finite and >= 0, got {speed}")


def read_payload(path: Path) -> dict[str, Any]:
    """The file's entries, if it is a segpipe checkpoint of this format."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SegpipeError(f"{path}: checkpoint not found (run the train stage first)") from None
    except Exception as e:  # a foreign or corrupt file: never fall back to unsafe unpickling
        raise SegpipeError(
            f"{path}: not a loadable segpipe checkpoint ({type(e).__name__})"
        ) from None
    version = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
        raise SegpipeError(
            f"{path}: written by a newer segpipe (checkpoint format {version}; this one reads "
            f"format {FORMAT}); upgrade segpipe to use it"
        )
    if version != FORMAT:
        raise SegpipeError(f"{path}: not a segpipe checkpoint (format {FORMAT})")
    if "model_config" not in payload and {"optimizer", "fingerprint"} <= payload.keys():
        raise SegpipeError(
            f"{path}: a training-resume state (saved after each epoch to continue an "
            "interrupted run), not a model checkpoint; use the train stage's checkpoint, "
            "models/model.pt"
        )
    return payload


def read_record(path: Path, payload: dict[str, Any]) -> Checkpoint:
    """The :class:`Checkpoint` in a loaded file's entries: every field present (and the
    ``state_dict``), none unknown, each of its type.

    Raises:
        SegpipeError: one line naming ``path`` and the field at fault.
    """
    if "state_dict" not in payload:
        raise SegpipeError(f"{path}: not a complete segpipe checkpoint: no state_dict")
    entries = {k: v for k, v in payload.items() if k not in ("format", "state_dict")}
    config = entries.get("model_config")
    if isinstance(config, dict) and not {"mean", "std"} & config.keys():
        # Written before checkpoints stored their normalisation: every model then was fed
        # ImageNet's mean and std.
        entries["model_config"] = {**config, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return read_strict(Checkpoint, entries, _strictness(path))


def _strictness(path: Path) -> Strictness:
    """How a checkpoint is read (:func:`~segpipe.config.read_strict`): fields added later may
    be absent, a Dice may be NaN; class names at least two, mean and std three numbers; every
    message names ``path``."""

    def sized(value: Any, key: str, read: Reader, tp: Any) -> tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, list | tuple) and (
            len(value) >= 2 if inner is str else len(value) == 3
        ):
            return tuple(read(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
        raise SegpipeError(wrong(key, value, tp))

    def fields(missing: list[str], unknown: list[str], where: str, valid: list[str]) -> str:
        if missing:
            return (
                f"{path}: not a complete segpipe checkpoint: no {', '.join(missing)} (the train "
                "stage writes every field; use the checkpoint it wrote)"
            )
        return (
            f"{path}: not a segpipe checkpoint of format {FORMAT}: unknown field {unknown[0]} "
            f"(valid in {where or 'the file'}: {', '.join(valid)})"
        )

    def wrong(key: str, value: Any, tp: Any) -> str:
        if typing.get_origin(tp) is Literal:
            return f"{path}: {key} is {value!r}, not one of {', '.join(typing.get_args(tp))}"
        if typing.get_origin(tp) is tuple:
            what = "at least 2 names" if typing.get_args(tp)[0] is str else "3 numbers"
            return f"{path}: {key} is {value!r}, not a list of {what}"
        name = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[tp]
        return f"{path}: {key} is {value!r}, not {name}"

    return Strictness(
        not_mapping=lambda where, raw: (
            f"{path}: {where or 'the file'} is a {type(raw).__name__}, not a mapping of fields"
        ),
        fields=fields,
        wrong=wrong,
        hooks={tp: functools.partial(sized, tp=tp) for tp in (tuple[str, ...], tuple[float, ...])},
        optional_defaults=True,
        finite=False,  # NaN: a validation Dice with nothing to score
    )
