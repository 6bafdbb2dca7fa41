"""How an image of any size becomes a model input, and which part of the output is the image.

Three geometries (``train.resize``, ``train.crop``, ``train.scale``), one size rule shared by the
cache stage, training and inference:

- ``squash``: resized to ``image_size`` x ``image_size`` whatever its aspect (the default).
- ``longest_side``: resized so its longest side is ``image_size``, aspect kept. Training pads
  it to the square (so batches stack), inference to the next multiple of 32.
- crops (``crop`` set): the image at ``scale`` of its own size, aspect kept; training takes
  random ``crop`` x ``crop`` windows of it, inference sees it whole (or tiled).

Padding goes below and to the right: black in the image, :data:`~segpipe.constants.IGNORE` in
the mask, so loss and metrics never count it, and inference crops it away before resizing the
logits back to the original resolution.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segpipe.config import Resize, TrainConfig
from segpipe.constants import IGNORE

if TYPE_CHECKING:  # albumentations is imported by the training steps only: inference needs none
    import albumentations as A

MULTIPLE = 32
"""Encoders downsample 5 times: every model input side is a multiple of 32."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Geometry:
    """The model's input geometry (stored in the checkpoint's ``model_config``).

    Args:
        resize: ``squash`` or ``longest_side`` (whole images at ``image_size``).
        image_size: the square side (``squash``) or longest side (``longest_side``).
        crop: training crop side, or None for whole images.
        scale: with ``crop``: the share of the original size images are kept at.
    """

    resize: Resize
    image_size: int
    crop: int | None
    scale: float

    @classmethod
    def from_train(cls, t: TrainConfig) -> Geometry:
        return cls(resize=t.resize, image_size=t.image_size, crop=t.crop, scale=t.scale)

    @classmethod
    def squash(cls, image_size: int) -> Geometry:
        """Every image squashed to the ``image_size`` square (the default geometry)."""
        return cls(resize="squash", image_size=image_size, crop=None, scale=1.0)

    @property
    def fixed_size(self) -> bool:
        """Whether every image becomes the same ``image_size`` square (batches stack as is)."""
        return self.crop is None and self.resize == "squash"

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an image of ``height`` x ``width`` is resized to, before any padding."""
        if self.crop is not None:
            factor = self.scale
        elif self.resize == "longest_side":
            factor = self.image_size / max(height, width)
        else:
            return self.image_size, self.image_size
        return max(1, round(height * factor)), max(1, round(width * factor))

    def describe(self) -> str:
        """The input geometry in a few words (model card, logs)."""
        if self.crop is not None:
            return (
                f"each image at {self.scale:g} of its size (trained on {self.crop}x{self.crop} "
                "crops)"
            )
        if self.resize == "longest_side":
            return f"longest side {self.image_size} (aspect kept, padded to multiples of 32)"
        return f"{self.image_size}x{self.image_size}"

    def cache_side(self) -> int | None:
        """The square side of the cache stage's arrays, or None: crops cache each image at its
        own (scaled) size."""
        return None if self.crop is not None else self.image_size

    def for_cache(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An image and its mask as the cache stage stores them: resized by
        :meth:`input_size` and, for ``longest_side``, padded to the square."""
        size = self.input_size(*image.shape[:2])
        image, mask = resize_pair(image, mask, size)
        side = self.cache_side()
        if side is not None:
            image, mask = pad_pair(image, mask, (side, side))
        return image, mask


def padded_size(height: int, width: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``multiple``."""
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to (h, w) as training always did: bilinear for the image, nearest for the mask,
    a no-op at the same size. This is albumentations' ``Resize`` (``cv2.resize`` for these
    arrays) without importing albumentations, which inference needs for nothing else."""
    if image.shape[:2] == tuple(size):
        return image, mask
    dsize = (size[1], size[0])
    image = cv2.resize(image, dsize, interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, dsize, interpolation=cv2.INTER_NEAREST)
    return image, mask


def pad_pair(
    image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad below and to the right up to (h, w): black image pixels, IGNORE mask pixels."""
    pad_h, pad_w = size[0] - image.shape[0], size[1] - image.shape[1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad {image.shape[:2]} to the smaller {size}")
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        if mask is not None:
            mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
    return image, mask


def crop_steps(crop: int) -> list[A.BasicTransform]:
    """Training's geometry with crops: pad (below/right, mask IGNORE) images smaller than the
    crop, then take a random ``crop`` x ``crop`` window."""
    import albumentations as A

    return [_pad_below_right(min_height=crop, min_width=crop), A.RandomCrop(crop, crop)]


def whole_image_steps() -> list[A.BasicTransform]:
    """Validation's geometry with crops: the whole scaled image, padded (below/right, mask
    IGNORE) to multiples of 32, as inference sees it."""
    return [
        _pad_below_right(
            min_height=None,
            min_width=None,
            pad_height_divisor=MULTIPLE,
            pad_width_divisor=MULTIPLE,
        )
    ]


def _pad_below_right(**size: int | None) -> A.PadIfNeeded:
    """Black image pixels and IGNORE mask pixels below and to the right, up to ``size``."""
    import albumentations as A

    return A.PadIfNeeded(
        **size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE
    )
