"""An RGB image as the network takes it: each channel's (mean, std) normalisation, then a
3xHxW float32 tensor. Training applies the same normalisation as albumentations' ``Normalize``
(:func:`segpipe.data.dataset.normalize`); :func:`normalise` is that transform's arithmetic
without importing albumentations, which inference needs for nothing else."""

from __future__ import annotations

import numpy as np
import torch
from albucore import normalize as _albucore_normalize

from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel (mean, std) of RGB in 0..1: what the encoder expects its input divided into."""

IMAGENET: Normalisation = (IMAGENET_MEAN, IMAGENET_STD)

MAX_PIXEL = 255.0
"""uint8 images: mean and std are given for 0..1 and scaled by this."""


def normalise(image: np.ndarray, normalisation: Normalisation = IMAGENET) -> np.ndarray:
    """``(image - mean * 255) / (std * 255)`` per channel, float32: the call and the float32
    constants of albumentations' ``Normalize(mean, std)``, so the same bytes (tested)."""
    mean, std = normalisation
    scaled_mean = np.array(mean, dtype=np.float32) * MAX_PIXEL
    denominator = np.reciprocal(np.array(std, dtype=np.float32) * MAX_PIXEL)
    return _albucore_normalize(image, scaled_mean, denominator)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 float array -> 3xHxW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
