"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.errors import SegpipeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise SegpipeError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SegpipeError(f"{path}: cannot read image ({e})") from None
    return image


def read_image(path: Path) -> np.ndarray:
    """An image as HxWx3 uint8 RGB. Grayscale, palette and RGBA images are converted to RGB."""
    return np.asarray(_open(path).convert("RGB"))


def read_gray(path: Path) -> np.ndarray:
    """A single-channel HxW uint8 view of an image (for display)."""
    return np.asarray(_open(path).convert("L"))


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """A mask as HxW uint8 class indices.

    Binary (two classes): 0/1 masks are kept, anything else is thresholded at 128, so 0/255
    masks and slightly noisy JPEG masks both work. Multi-class masks must hold class indices.
    """
    image = _open(path)
    if image.mode not in ("L", "P", "1", "I", "I;16"):
        image = image.convert("L")
    mask = np.asarray(image)
    if mask.ndim != 2:
        raise SegpipeError(f"{path}: a mask must have a single channel, got shape {mask.shape}")
    if num_classes == 2:
        return (mask >= 128).astype(np.uint8) if mask.max(initial=0) > 1 else mask.astype(np.uint8)
    found = np.unique(mask)
    if found.max(initial=0) >= num_classes:
        raise SegpipeError(
            f"{path}: mask values {found.tolist()[:10]} do not fit the {num_classes} classes "
            f"of data.classes (expected 0..{num_classes - 1})"
        )
    return mask.astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as e:
        raise SegpipeError(f"{path}: cannot read image ({e})") from None
    return height, width


def read_pair(image_path: Path, mask_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, checked to have the same size."""
    image, mask = read_image(image_path), read_mask(mask_path, num_classes)
    if image.shape[:2] != mask.shape:
        raise SegpipeError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
            f"image size {image.shape[1]}x{image.shape[0]} ({image_path})"
        )
    return image, mask
