"""Class colours: palette PNGs for multi-class masks, and colour views of label maps."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segpipe.constants import IGNORE

# Background black, then matplotlib's tab10 colours; IGNORE is grey.
_BASE = np.array(
    [
        [0, 0, 0],
        [214, 39, 40],
        [31, 119, 180],
        [44, 160, 44],
        [255, 127, 14],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [188, 189, 34],
        [23, 190, 207],
        [127, 127, 127],
    ],
    dtype=np.uint8,
)
IGNORE_COLOUR = (160, 160, 160)


def palette(num_classes: int) -> np.ndarray:
    """(256, 3) uint8 colours by class index; classes past the base colours get seeded ones."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    n = min(num_classes, len(_BASE))
    colours[:n] = _BASE[:n]
    if num_classes > n:
        rng = np.random.default_rng(0)
        colours[n:num_classes] = rng.integers(40, 256, size=(num_classes - n, 3))
    colours[IGNORE] = IGNORE_COLOUR
    return colours


def colourize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """An HxW label map as HxWx3 uint8 colours (binary: white foreground on black)."""
    if num_classes == 2:
        colours = palette(2)
        colours[1] = (255, 255, 255)
        return colours[labels]
    return palette(num_classes)[labels]


def mask_to_png(labels: np.ndarray, num_classes: int) -> Image.Image:
    """Binary masks as 8-bit 0/255; multi-class ones as palette PNGs whose pixel values are
    the class indices, so viewers show colours and readers get indices."""
    if num_classes == 2:
        return Image.fromarray((labels > 0).astype(np.uint8) * 255)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(palette(num_classes).ravel().tolist())
    return image


def blend(image: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    """Tint ``image`` (HxWx3 float32) in place at ``where``: one colour, or one per pixel."""
    image[where] = (1 - alpha) * image[where] + alpha * np.asarray(colour, np.float32)
