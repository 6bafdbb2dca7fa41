"""The split stage: pair images and masks by file stem and split them, deterministically."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.config import SplitConfig
from segpipe.errors import SegpipeError
from segpipe.files import atomic_write
from segpipe.images import IMAGE_EXTENSIONS, image_size

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; two files with one stem are an error."""
    if not folder.is_dir():
        raise SegpipeError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise SegpipeError(
                f"{folder}: two files share the stem {path.stem!r} "
                f"({found[path.stem].name}, {path.name}); keep one"
            )
        found[path.stem] = path
    return found


def pair_files(raw_dir: Path) -> pd.DataFrame:
    """Rows of (stem, image, mask) for every stem present in both ``images/`` and ``masks/``.

    Unpaired files are skipped with a warning; an empty result is an error.
    """
    images, masks = list_images(raw_dir / "images"), list_images(raw_dir / "masks")
    for stem in sorted(images.keys() - masks.keys()):
        log.warning("skipped %s: no mask with the same stem", images[stem])
    for stem in sorted(masks.keys() - images.keys()):
        log.warning("skipped %s: no image with the same stem", masks[stem])
    stems = sorted(images.keys() & masks.keys())
    if not stems:
        raise SegpipeError(f"{raw_dir}: no image/mask pairs with matching file stems")
    return pd.DataFrame(
        {
            "stem": stems,
            "image": [images[s].as_posix() for s in stems],
            "mask": [masks[s].as_posix() for s in stems],
        }
    )


def assign_splits(n: int, cfg: SplitConfig, seed: int) -> np.ndarray:
    """A split name per item: a seeded permutation cut into test, val and train.

    Every item lands in exactly one split; each split gets at least one item.
    """
    n_test = max(1, round(n * cfg.test_fraction))
    n_val = max(1, round(n * cfg.val_fraction))
    if n - n_test - n_val < 1:
        raise SegpipeError(
            f"split: {n} image(s) are too few for val_fraction={cfg.val_fraction} and "
            f"test_fraction={cfg.test_fraction} (each split needs at least one image)"
        )
    order = np.random.default_rng(seed).permutation(n)
    names = np.empty(n, dtype=object)
    names[order[:n_test]] = "test"
    names[order[n_test : n_test + n_val]] = "val"
    names[order[n_test + n_val :]] = "train"
    return names


def run(cfg: SplitConfig, seed: int, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write ``train.csv``, ``val.csv`` and ``test.csv`` to ``out_dir``; no image is copied.

    Returns:
        The number of pairs in each split.
    """
    frame = pair_files(raw_dir)
    sizes = [image_size(Path(p)) for p in frame["image"]]
    frame["height"] = [h for h, _ in sizes]
    frame["width"] = [w for _, w in sizes]
    frame["split"] = assign_splits(len(frame), cfg, seed)
    counts = {}
    for name in SPLITS:
        part = frame[frame["split"] == name].drop(columns="split")
        atomic_write(out_dir / f"{name}.csv", lambda tmp, part=part: part.to_csv(tmp, index=False))
        counts[name] = len(part)
    log.info("split %d pairs: %s", len(frame), counts)
    return counts
