"""Reading image files into numpy arrays (formats, EXIF orientation, folder scans), with errors
that name the file. Masks are read through :mod:`segpipe.data.masks`."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from segpipe.errors import SegpipeError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""File name endings read as images, in any letter case."""
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
"""Greyscale modes with more than 8 bits per pixel: scaled to 0..255 by each image's range."""
_ORIENTATION = ExifTags.Base.Orientation


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What a folder holds, walked recursively: ``images`` by stem; ``duplicates``, image
    files whose stem an earlier file (in sorted order) has; ``others``, the files that are not
    images (by extension); ``links``, symbolic links that are not followed (to a folder, broken,
    or to a file outside the folder where links are confined). Hidden files and folders
    (``.name``) are left out."""

    root: Path
    images: dict[str, Path]
    duplicates: list[Path]
    others: list[Path]
    links: list[Path]

    def require_unique_stems(self) -> None:
        """Raise :class:`SegpipeError` naming the first two files that share a stem."""
        if self.duplicates:
            path = self.duplicates[0]
            stem = stem_of(path, self.root)
            raise SegpipeError(
                f"{self.root}: two files share the stem {stem!r} "
                f"({self.images[stem].name}, {path.name}); keep one"
            )

    def warn_others(self, what: str) -> None:
        """Warnings naming the files that are not read as images and the links not followed."""
        if self.others:
            log.warning(
                "%s: ignored %d file(s) that are not supported images (%s): %s",
                what,
                len(self.others),
                ", ".join(IMAGE_EXTENSIONS),
                short_list([p.relative_to(self.root).as_posix() for p in self.others]),
            )
        if self.links:
            log.warning(
                "%s: skipped %d symbolic link(s) to folders, broken, or to files outside it: %s",
                what,
                len(self.links),
                short_list([p.relative_to(self.root).as_posix() for p in self.links]),
            )


def stem_of(path: Path, root: Path) -> str:
    """A file's name without its extension, prefixed by its subfolders below ``root``
    (``root/a/b/0001.jpg`` -> ``a/b/0001``): the text that names its outputs and pairs an image
    with its mask. It is in Unicode's composed form (NFC): macOS writes names decomposed (NFD),
    so ``café.jpg`` from one tool and ``café.png`` from another print the same but differ as
    bytes; two files whose names differ only so share a stem."""
    relative = Path(path).relative_to(root)
    stem = relative.with_suffix("").as_posix() if relative.suffix else relative.as_posix()
    return unicodedata.normalize("NFC", stem)


def is_image_file(path: Path) -> bool:
    """Whether ``path``'s name ends with an image extension (any letter case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def scan_folder(
    root: Path, exclude: Path | None = None, *, confine_links: bool = False
) -> FolderScan:
    """The image files below ``root`` by stem (see :func:`stem_of`), in sorted order.

    Subfolders are walked; ``exclude`` (a folder inside ``root``) is skipped. Symbolic links
    to folders are not followed. With ``confine_links``, neither are links to files outside
    ``root``: a dataset copied into the pipeline (and pushed to a remote) must not pick up any
    file of the machine, such as ``masks/x.png -> /etc/passwd``.
    """
    root = Path(root)
    inside = root.resolve()
    skip = exclude.resolve() if exclude is not None else None
    images: dict[str, Path] = {}
    duplicates: list[Path] = []
    others: list[Path] = []
    links: list[Path] = []
    for parent, dirnames, filenames in os.walk(root):
        here = Path(parent)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (here / d).resolve() != skip
        )
        links += [here / d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                continue
            if path.is_symlink() and not (
                path.exists() and (not confine_links or path.resolve().is_relative_to(inside))
            ):
                links.append(path)  # broken, or outside root where links are confined
                continue
            if not path.is_file():
                continue
            if not is_image_file(path):
                others.append(path)
                continue
            stem = stem_of(path, root)
            if stem in images:
                duplicates.append(path)
            else:
                images[stem] = path
    return FolderScan(root, dict(sorted(images.items())), duplicates, others, links)


def short_list(items: list, limit: int = 10) -> str:
    """``a, b, c, ... and N more``: a list that stays one readable line."""
    shown = [str(i) for i in items[:limit]]
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit} more")
    return ", ".join(shown)


class UnreadableImageError(SegpipeError):
    """A file that cannot be fully decoded as an image; ``reason`` says why, without the path."""

    def __init__(self, path: Path, reason: str) -> None:
        what = reason if reason == "file not found" else f"cannot read image ({reason})"
        super().__init__(f"{path}: {what}")
        self.path = Path(path)
        self.reason = reason


PIXELS_ENV = "SEGPIPE_MAX_IMAGE_PIXELS"
"""The environment variable that raises the pixel limit against decompression bombs."""
_DEFAULT_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""PIL refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` (about 179 million
pixels, 13,000 x 13,000): a small file that would decode to gigabytes could be an attack."""


def max_pixels() -> int:
    """The most pixels an image may have: ``SEGPIPE_MAX_IMAGE_PIXELS`` if set, else PIL's
    limit. Set in PIL, so that every decode in this process follows it.

    Raises:
        SegpipeError: the variable is not a whole number >= 1.
    """
    text = os.environ.get(PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        limit = _DEFAULT_PIXELS
    elif text.isdigit() and int(text) >= 1:
        limit = int(text)
    else:
        raise SegpipeError(
            f"{PIXELS_ENV}: expected a whole number of pixels (e.g. 400000000 for 20000 x "
            f"20000), got {os.environ[PIXELS_ENV]!r}"
        )
    Image.MAX_IMAGE_PIXELS = max(1, limit // 2)  # PIL refuses above twice this, warns above
    return limit


def _decode_failure(error: Exception) -> str:
    """A short reason for a failed open or decode (PIL's messages repeat the path)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(error, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found[1]) if found else None
        size = f"{pixels:,} pixels" if pixels else "its pixels"
        allow = pixels or "N"
        return (
            f"{size}, more than the {max_pixels():,} allowed against decompression bombs; if "
            f"the file is trusted, allow it: set {PIXELS_ENV}={allow} in the environment"
        )
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    if isinstance(error, OSError):
        return f"truncated or corrupt: {error}"
    return f"corrupt: {type(error).__name__}: {error}"


def open_image(
    path: Path,
    *,
    upright: bool = True,
    before_load: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """Open and fully decode an image, so truncated files fail here rather than in training.

    Args:
        upright: apply the EXIF orientation (see :func:`make_upright`), as viewers and
            annotation tools show the photo. Masks are read as stored (``upright=False``).
        before_load: called on the opened, not yet decoded image (to set a draft mode).

    An image of several frames (animated GIF or PNG, multi-page TIFF) is refused rather than
    read at its first frame: which one is meant is unknown. A camera's multi-picture JPEG (MPO)
    is read: its first frame is the photo, the others are previews or a second view.

    Raises:
        UnreadableImageError: missing, empty, unrecognised, truncated or corrupt file, or an
            image of several frames.
    """
    path = Path(path)
    max_pixels()
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
                frames = getattr(image, "n_frames", 1)
                if frames > 1 and image.format != "MPO":
                    raise UnreadableImageError(
                        path,
                        f"{frames} frames, an animated or multi-page image: which one is meant "
                        "is unknown; save the one wanted alone, as a PNG",
                    )
                if before_load is not None:
                    before_load(image)
                image.load()
            if upright:
                make_upright(image)
        except FileNotFoundError:
            raise UnreadableImageError(path, "file not found") from None
        except UnreadableImageError:
            raise
        except Exception as e:  # untrusted files make PIL's decoders raise many types
            raise UnreadableImageError(path, _decode_failure(e)) from None
    for warning in caught:
        log.debug("%s: %s", path, warning.message)
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 = as stored, 2-8 = mirrored and/or turned); 1 if absent or
    unreadable (as viewers treat it)."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # malformed EXIF in an untrusted file: PIL raises many types
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def make_upright(image: Image.Image) -> bool:
    """Turn ``image`` (in place) as its EXIF orientation says; True if it had to be turned.

    Phones store photos in the sensor's orientation with a tag that every viewer applies, so
    ``Orientation: 6`` stored 90x60 is shown, annotated and predicted 60x90.
    """
    if exif_orientation(image) == 1:
        return False
    ImageOps.exif_transpose(image, in_place=True)
    return True


def shown_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of ``image`` as viewers show it: swapped for the EXIF orientations that
    turn it by 90 degrees (5-8)."""
    width, height = image.size
    return (height, width) if exif_orientation(image) >= 5 else (width, height)


def turn_like(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` (a mask drawn on a photo's stored pixels) turned as :func:`make_upright`
    turns a photo with EXIF ``orientation``, so that it lines up with the photo as shown."""
    turned = image.copy()
    turned.getexif()[_ORIENTATION] = orientation
    return ImageOps.exif_transpose(turned)


def to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded image as HxWx3 uint8 RGB.

    Grayscale, palette, RGBA and CMYK images are converted. Greyscale images with more than 8
    bits (16-bit PNG/TIFF, 32-bit integer or float TIFF) are scaled linearly from their own
    minimum..maximum to 0..255, not clipped (12-bit data would otherwise saturate).
    """
    if image.mode in _HIGH_BIT_MODES:
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        grey = np.rint((values - low) * scale).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("P", "PA"):  # via RGBA: avoids PIL's palette-transparency warning
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def is_high_bit_depth(image: Image.Image) -> bool:
    """Whether :func:`to_rgb` scales ``image`` by its range (more than 8 bits per pixel)."""
    return image.mode in _HIGH_BIT_MODES


def read_image(path: Path) -> np.ndarray:
    """An image as HxWx3 uint8 RGB, upright as its EXIF orientation says (see :func:`to_rgb`)."""
    return to_rgb(open_image(path))


def read_image_reduced(
    path: Path, needed: Callable[[int, int], tuple[int, int]]
) -> tuple[np.ndarray, tuple[int, int]]:
    """An image as :func:`read_image` gives it, but decoded at a reduced scale where the
    format allows it, and its full (height, width) as shown.

    JPEGs are decoded at 1/2, 1/4 or 1/8 scale (the DCT scaling of libjpeg, through PIL's
    draft mode): the largest reduction that keeps at least ``needed(height, width)`` (the
    full size as shown in, the smallest useful size out). That skips most of the decoding
    work for photos much larger than the model input. Other formats are decoded in full.
    """
    full: list[tuple[int, int]] = []

    def draft(image: Image.Image) -> None:
        width, height = shown_size(image)
        full.append((height, width))
        need_h, need_w = needed(height, width)
        turned = exif_orientation(image) >= 5  # the stored pixels are turned by 90 degrees
        request = (need_h, need_w) if turned else (need_w, need_h)
        if image.format == "JPEG":
            image.draft(image.mode, request)

    return to_rgb(open_image(path, before_load=draft)), full[0]
