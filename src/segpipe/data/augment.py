"""``train.augment`` as albumentations transforms: a short list of names that move image and
mask alike (geometry) or change the image only (colour, blur, noise), checked by name and
argument with one-line errors."""

from __future__ import annotations

import inspect
import re

import albumentations as A

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
"""The transforms ``train.augment`` may list. Each keeps the image size (RandomResizedCrop's
``size`` defaults to the model's input size), so batches stack; geometric ones move the mask
with the image (nearest-neighbour for the mask)."""

SIZED = ("RandomResizedCrop",)
"""Transforms whose ``size`` argument, when left out, is the model's (height, width)."""


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
    try:
        return cls(**kwargs)
    except Exception as e:  # albumentations validates with pydantic: say which value, one line
        raise SegpipeError(f"{key}: {step.name}{_args_text(step)}: {_reason(e)}") from None


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
