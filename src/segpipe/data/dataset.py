"""The Dataset and its albumentations transforms.

A split CSV (columns ``image`` and ``mask``) becomes (image tensor, mask tensor) pairs:
``image`` is float32 3xHxW, ImageNet-normalised; ``mask`` is int64 HxW class indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from segpipe.config import DEFAULT_AUGMENT, AugmentStep
from segpipe.data.augment import build_augmentations
from segpipe.data.masks import MaskRule, read_pair
from segpipe.data.normalise import IMAGENET, MAX_PIXEL, Normalisation, to_tensor
from segpipe.errors import SegpipeError

if TYPE_CHECKING:  # pandas is the split CSVs' reader's; predict imports this module without it
    import pandas as pd


def normalize(normalisation: Normalisation = IMAGENET) -> A.Normalize:
    """The input normalisation every training input gets: the encoder's per-channel (mean,
    std). Inference applies the same arithmetic with :func:`~segpipe.data.normalise.normalise`."""
    mean, std = normalisation
    return A.Normalize(mean=mean, std=std, max_pixel_value=MAX_PIXEL)


def build_transform(
    image_size: int,
    *,
    augment: bool | tuple[AugmentStep, ...],
    seed: int,
    normalisation: Normalisation = IMAGENET,
    geometry: Sequence[A.BasicTransform] | None = None,
    augment_size: int | None = None,
) -> A.Compose:
    """Geometry (default: resize to the ``image_size`` square), the ``train.augment``
    transforms (``True``: flip + colour jitter, ``False``: none; sized ones default to
    ``augment_size``, else ``image_size``) and normalisation with the encoder's (mean, std).

    albumentations 2.x ignores global seeds, hence ``seed=`` here.
    """
    if isinstance(augment, bool):
        augment = DEFAULT_AUGMENT if augment else ()
    steps = [A.Resize(image_size, image_size)] if geometry is None else list(geometry)
    return A.Compose(
        [
            *steps,
            *build_augmentations(augment, augment_size or image_size),
            normalize(normalisation),
        ],
        seed=seed,
    )


class SegmentationDataset(Dataset):
    """Pairs from a split frame, decoded and transformed on every access (no cache): the
    reference the cached path is tested against.

    Args:
        frame: rows with ``image`` and ``mask`` paths.
        transform: applied to image and mask together.
        rule: the split stage's mask rule (see :func:`~segpipe.data.masks.load_rule`).
    """

    def __init__(self, frame: pd.DataFrame, transform: A.Compose, rule: MaskRule) -> None:
        self.images = frame["image"].tolist()
        self.masks = frame["mask"].tolist()
        self.transform = transform
        self.rule = rule

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = read_pair(Path(self.images[index]), Path(self.masks[index]), self.rule)
        out = self.transform(image=image, mask=mask)
        return to_tensor(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))


class CachedDataset(Dataset):
    """Pairs from the cache stage's memory-mapped arrays (already resized to the model size).

    The arrays are opened lazily in each process (DataLoader workers included), and only the
    rows a batch needs are paged in.

    Args:
        images_path: ``(N, S, S, 3)`` uint8 ``.npy`` file, or ``(P, 3)`` pixels of images of
            different sizes (crop training) with ``shapes_path``.
        masks_path: ``(N, S, S)`` uint8 ``.npy`` file of class indices, or ``(P,)``.
        transform: applied to image and mask together (its resize is then a no-op).
        shapes_path: ``(N, 2)`` ``.npy`` file of each image's (h, w) when sizes differ.
    """

    def __init__(
        self,
        images_path: Path,
        masks_path: Path,
        transform: A.Compose,
        shapes_path: Path | None = None,
    ) -> None:
        self.images_path, self.masks_path = Path(images_path), Path(masks_path)
        self.transform = transform
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self.shapes: np.ndarray | None = None
        try:
            n = len(np.load(self.images_path, mmap_mode="r"))
            if shapes_path is not None:
                self.shapes = np.load(shapes_path)
                n = len(self.shapes)
        except FileNotFoundError as e:
            raise SegpipeError(f"{e.filename}: cache not found (run the cache stage)") from None
        self.offsets = None if self.shapes is None else pixel_offsets(self.shapes)
        self.length = n

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.cached(index)
        out = self.transform(image=image, mask=mask)
        return to_tensor(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))

    def cached(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (H, W, 3) and mask (H, W) at ``index`` as cached (uint8, before the
        transform), copied out of the memory maps."""
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
            self._masks = np.load(self.masks_path, mmap_mode="r")
        assert self._images is not None and self._masks is not None
        if self.shapes is None or self.offsets is None:
            return np.array(self._images[index]), np.array(self._masks[index])
        (h, w), start = self.shapes[index], self.offsets[index]
        end = start + h * w
        return (
            np.array(self._images[start:end]).reshape(h, w, 3),
            np.array(self._masks[start:end]).reshape(h, w),
        )

    def __getstate__(self) -> dict:
        # Workers reopen the memmaps themselves rather than receiving pickled arrays.
        return {**self.__dict__, "_images": None, "_masks": None}


def pixel_offsets(shapes: np.ndarray) -> np.ndarray:
    """Where each image of ``shapes`` (N, 2) starts in a flat array of their pixels."""
    sizes = shapes[:, 0] * shapes[:, 1]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
