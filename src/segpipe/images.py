"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.errors import SegpipeError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MASK_MODES = ("L", "P", "1", "I", "I;16")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by extension; hidden files skipped), sorted."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


class UnreadableImageError(SegpipeError):
    """A file that cannot be fully decoded as an image; ``reason`` says why, without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        what = reason if reason == "file not found" else f"cannot read image ({reason})"
        super().__init__(f"{path}: {what}")
        self.path = Path(path)
        self.reason = reason


def _decode_failure(error: Exception) -> str:
    """A short reason for a failed open or decode (PIL's messages repeat the path)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large, refused as a possible decompression bomb: {error}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    if isinstance(error, OSError):
        return f"truncated or corrupt: {error}"
    return f"corrupt: {type(error).__name__}: {error}"


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, so truncated files fail here rather than in training.

    Raises:
        UnreadableImageError: missing, empty, unrecognised, truncated or corrupt file.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(path, "empty file, 0 bytes")
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except OSError as e:
        raise UnreadableImageError(path, _decode_failure(e)) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as image:
                image.load()
        except FileNotFoundError:
            raise UnreadableImageError(path, "file not found") from None
        except Exception as e:  # untrusted files make PIL's decoders raise many types
            raise UnreadableImageError(path, _decode_failure(e)) from None
    for warning in caught:
        log.debug("%s: %s", path, warning.message)
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded image as HxWx3 uint8 RGB (grayscale, palette and RGBA are converted)."""
    if image.mode in ("P", "PA"):  # via RGBA: avoids PIL's palette-transparency warning
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def read_image(path: Path) -> np.ndarray:
    """An image as HxWx3 uint8 RGB. Grayscale, palette and RGBA images are converted to RGB."""
    return to_rgb(open_image(path))


def mask_values(image: Image.Image) -> np.ndarray:
    """The raw HxW values of a decoded mask: indices of palette masks, gray level of RGB ones."""
    if image.mode not in _MASK_MODES:
        image = image.convert("L")
    values = np.asarray(image)
    return values.astype(np.uint8) if values.dtype == bool else values


IGNORE = 255
"""Class index of pixels left out of loss and metrics; ``data.ignore_index`` maps to it."""


def to_class_indices(
    values: np.ndarray, num_classes: int, path: Path, ignore_index: int | None = None
) -> np.ndarray:
    """Raw mask values as HxW uint8 class indices, with :data:`IGNORE` for ignored pixels.

    Pixels equal to ``ignore_index`` become :data:`IGNORE`. Binary (two classes): 0/1 masks
    are kept, anything else is thresholded at 128, so 0/255 masks and slightly noisy JPEG masks
    both work. Multi-class masks must hold class indices (class-index or palette PNGs).

    Raises:
        SegpipeError: a multi-class mask holds values outside ``0..num_classes-1``.
    """
    ignored = values == ignore_index if ignore_index is not None else None
    kept = values[~ignored] if ignored is not None else values
    if num_classes == 2:
        labels = values >= 128 if kept.max(initial=0) > 1 else values != 0
        labels = labels.astype(np.uint8)
    else:
        found = np.unique(kept)
        bad = found[(found < 0) | (found >= num_classes)]
        if bad.size:
            hint = (
                "; if it marks pixels to leave out, set data.ignore_index to it"
                if bad.size == 1 and ignore_index is None
                else ""
            )
            raise SegpipeError(
                f"{path}: mask values {_short_list(bad)} fit none of the {num_classes} classes "
                f"of data.classes (expected 0..{num_classes - 1}; the mask holds "
                f"{_short_list(np.unique(values))}){hint}"
            )
        labels = values.astype(np.uint8)
    if ignored is not None:
        labels[ignored] = IGNORE
    return labels


def _short_list(values: np.ndarray, limit: int = 10) -> str:
    items = [str(v) for v in values.tolist()[:limit]]
    if len(values) > limit:
        items.append(f"... {len(values) - limit} more")
    return "[" + ", ".join(items) + "]"


def read_mask(path: Path, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """A mask as HxW uint8 class indices (see :func:`to_class_indices`)."""
    return to_class_indices(mask_values(open_image(path)), num_classes, path, ignore_index)


def read_pair(
    image_path: Path, mask_path: Path, num_classes: int, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask (class indices), checked to have the same size."""
    image = read_image(image_path)
    mask = read_mask(mask_path, num_classes, ignore_index)
    if image.shape[:2] != mask.shape:
        raise SegpipeError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from "
            f"image size {image.shape[1]}x{image.shape[0]} ({image_path})"
        )
    return image, mask
