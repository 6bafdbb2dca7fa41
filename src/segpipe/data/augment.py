"""``train.augment`` as albumentations transforms: a short list of names that move image and
mask alike (geometry) or change the image only (colour, blur, noise), checked by name and
argument with one-line errors."""

from __future__ import annotations

import inspect
import re

import albumentations as A
import numpy as np

from segpipe.config import AugmentStep
from segpipe.errors import SegpipeError

AUGMENTATIONS = (
    "HorizontalFlip",
    "VerticalFlip",
    "RandomRotate90",
    "Transpose",
    "Affine",
    "ShiftScaleRotate",
    "Rotate",
    "RandomResizedCrop",
    "ElasticTransform",
    "GridDistortion",
    "ColorJitter",
    "RandomBrightnessContrast",
    "HueSaturationValue",
    "RandomGamma",
    "CLAHE",
    "GaussianBlur",
    "GaussNoise",
)
"""The transforms ``train.augment`` may list. Each must keep the image size (RandomResizedCrop's
``size`` defaults to the model's input size; settings that change it are refused), so batches
stack; geometric ones move the mask with the image (nearest-neighbour for the mask)."""

SIZED = ("RandomResizedCrop",)
"""Transforms whose ``size`` argument, when left out, is the model's (height, width)."""

SIZE_CHANGING = ("crop_border", "fit_output")
"""Arguments that, when true, make a transform return another size than it was given (a
rotated image cut to its largest inner rectangle, an affine output grown to hold it whole)."""

PROBE_DRAWS = 4
"""Seeded draws of each transform on a blank input of the model's size, to catch any other
setting that changes the size (a ``size`` of RandomResizedCrop other than the model's)."""


def build_augmentations(
    steps: tuple[AugmentStep, ...], image_size: int, key: str = "train.augment"
) -> list[A.BasicTransform]:
    """The transforms of ``steps``, in order.

    Raises:
        SegpipeError: an unknown transform or argument (listing the valid ones), or a value
            albumentations refuses, naming ``key[i]``.
    """
    return [_build_step(step, image_size, f"{key}[{i}]") for i, step in enumerate(steps)]


def _build_step(step: AugmentStep, image_size: int, key: str) -> A.BasicTransform:
    if step.name not in AUGMENTATIONS:
        raise SegpipeError(
            f"{key}: unknown transform {step.name!r} (valid: {', '.join(AUGMENTATIONS)})"
        )
    cls = getattr(A, step.name)
    valid = transform_arguments(cls)
    kwargs = dict(step.args)
    unknown = [name for name in kwargs if name not in valid]
    if unknown:
        raise SegpipeError(
            f"{key}: {step.name} has no argument {unknown[0]!r} (valid: {', '.join(valid)})"
        )
    if step.name in SIZED and "size" not in kwargs:
        kwargs["size"] = (image_size, image_size)
    for name in SIZE_CHANGING:
        if kwargs.get(name) is True:
            raise SegpipeError(
                f"{key}: {step.name}{_args_text(step)}: {name}: true changes the image size, so "
                f"a batch's images cannot stack; set {name}: false (or leave it out)"
            )
    try:
        transform = cls(**kwargs)
        probe = cls(**{**kwargs, "p": 1.0})
    except Exception as e:  # albumentations validates with pydantic: say which value, one line
        raise SegpipeError(f"{key}: {step.name}{_args_text(step)}: {_reason(e)}") from None
    _require_same_size(probe, image_size, f"{key}: {step.name}{_args_text(step)}")
    return transform


def _require_same_size(transform: A.BasicTransform, image_size: int, where: str) -> None:
    """Refuse a transform that returns another size than the ``image_size`` square it gets
    (batches are stacked after it, and would fail in collate, mid-training)."""
    image = np.zeros((image_size, image_size, 3), np.uint8)
    mask = np.zeros((image_size, image_size), np.uint8)
    for seed in range(PROBE_DRAWS):
        out = A.Compose([transform], seed=seed)(image=image, mask=mask)
        got = out["image"].shape[:2]
        if got != image.shape[:2] or out["mask"].shape[:2] != mask.shape:
            hint = (
                f"leave size out (it is then the model's, {image_size}x{image_size})"
                if "size" in transform_arguments(type(transform))
                else "remove the argument that changes it"
            )
            raise SegpipeError(
                f"{where}: changes the image size ({image_size}x{image_size} -> "
                f"{got[0]}x{got[1]}), so a batch's images cannot stack; {hint}"
            )


def transform_arguments(cls: type) -> list[str]:
    """The keyword arguments of an albumentations transform's constructor."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _args_text(step: AugmentStep) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in step.args) + ")"


def _reason(error: Exception) -> str:
    """albumentations' complaint (pydantic's, without its type tags and links) on one line."""
    text = " ".join(str(error).split())
    text = re.sub(r"\s*\[type=[^\]]*\]|\s*For further information visit \S+", "", text)
    return re.sub(r"^\d+ validation errors? for \w+ ", "", text)
