"""The cache stage: decode and resize every split once into memory-mapped uint8 arrays.

Training reads ``(N, S, S, 3)`` images and ``(N, S, S)`` masks through ``np.load(mmap_mode="r")``
instead of decoding full-size files every epoch. Memory stays bounded as the dataset grows: the
OS pages the arrays in and out, and nothing holds the decoded dataset in the Python heap.
"""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import numpy as np
from numpy.lib.format import open_memmap

from segpipe.dataset import read_split
from segpipe.files import staged_dir
from segpipe.masks import MaskRule, read_pair
from segpipe.split import SPLITS

log = logging.getLogger(__name__)


def cache_paths(cache_dir: Path, split: str) -> tuple[Path, Path]:
    """Where the images and masks arrays of ``split`` live."""
    return cache_dir / f"{split}_images.npy", cache_dir / f"{split}_masks.npy"


def build_split_cache(
    split_csv: Path,
    images_path: Path,
    masks_path: Path,
    image_size: int,
    rule: MaskRule,
) -> int:
    """Resize every pair of ``split_csv`` exactly as training would (albumentations' Resize:
    bilinear for images, nearest for masks; masks read by ``rule``) and write both arrays.
    Returns the count."""
    frame = read_split(split_csv)
    resize = A.Resize(image_size, image_size)
    n = len(frame)
    images = open_memmap(images_path, "w+", np.uint8, (n, image_size, image_size, 3))
    masks = open_memmap(masks_path, "w+", np.uint8, (n, image_size, image_size))
    for i, (image_file, mask_file) in enumerate(zip(frame["image"], frame["mask"], strict=True)):
        image, mask = read_pair(Path(image_file), Path(mask_file), rule)
        out = resize(image=image, mask=mask)
        images[i], masks[i] = out["image"], out["mask"]
    images.flush()
    masks.flush()
    return n


def run(splits_dir: Path, cache_dir: Path, image_size: int, rule: MaskRule) -> dict[str, int]:
    """Cache the train, val and test splits at ``image_size``; masks hold class indices by the
    split stage's ``rule`` (see :func:`~segpipe.masks.load_rule`), with
    :data:`~segpipe.images.IGNORE` where ``ignore_index`` was."""
    counts = {}
    with staged_dir(cache_dir) as staging:  # all six arrays appear together, or none
        for split in SPLITS:
            images_path, masks_path = cache_paths(staging, split)
            counts[split] = build_split_cache(
                splits_dir / f"{split}.csv",
                images_path,
                masks_path,
                image_size,
                rule,
            )
    size_mb = sum(p.stat().st_size for p in cache_dir.glob("*.npy")) / 2**20
    log.info("cached %s at %dx%d (%.1f MiB)", counts, image_size, image_size, size_mb)
    return counts
