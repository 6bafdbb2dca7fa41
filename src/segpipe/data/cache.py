"""The cache stage: decode and resize the training splits once into memory-mapped uint8 arrays.

Training reads ``(N, S, S, 3)`` images and ``(N, S, S)`` masks of the train and val splits
through ``np.load(mmap_mode="r")`` instead of decoding full-size files every epoch. Memory stays
bounded as the dataset grows: the OS pages the arrays in and out, and nothing holds the decoded
dataset in the Python heap. The cache stage writes the arrays with plain file writes, pair by
pair, so its own memory does not grow with N either.

Crop training (``train.crop``) keeps each image at ``train.scale`` of its own size, so the
sizes differ: the pixels of all images then lie one after another in ``(P, 3)`` and ``(P,)``
arrays, and ``<split>_shapes.npy`` holds each image's (h, w).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.data.geometry import Geometry
from segpipe.data.masks import MaskRule, read_pair
from segpipe.data.tables import dataset_folder, read_split
from segpipe.errors import SegpipeError
from segpipe.files import require_apart, reserve_space, staged_dir, write_error
from segpipe.progress import progress
from segpipe.resources import data_threads, ordered_map

log = logging.getLogger(__name__)

CACHED_SPLITS = ("train", "val")
"""The splits training reads. Nothing reads a cached test split: evaluate, plot and predict
decode the test images at their original resolution."""


def cache_paths(cache_dir: Path, split: str) -> tuple[Path, Path]:
    """Where the images and masks arrays of ``split`` live."""
    return cache_dir / f"{split}_images.npy", cache_dir / f"{split}_masks.npy"


def shapes_path(cache_dir: Path, split: str) -> Path:
    """Where the (h, w) of each image of ``split`` lives when sizes differ (crop training)."""
    return cache_dir / f"{split}_shapes.npy"


def cached_shapes(frame: pd.DataFrame, geometry: Geometry) -> np.ndarray:
    """(N, 2) int64: the size each image of ``frame`` is cached at, from the split's sizes."""
    heights, widths = frame["height"].astype(int), frame["width"].astype(int)
    sizes = [geometry.input_size(h, w) for h, w in zip(heights, widths, strict=True)]
    return np.array(sizes, dtype=np.int64).reshape(len(frame), 2)


def array_shapes(frame: pd.DataFrame, geometry: Geometry) -> tuple[int, ...]:
    """The images array's shape without its channel axis (the masks array's shape)."""
    side = geometry.cache_side()
    if side is not None:
        return (len(frame), side, side)
    return (int(cached_shapes(frame, geometry).prod(axis=1).sum()),)


def allocate(path: Path, shape: tuple[int, ...]) -> None:
    """Write the header of a uint8 ``.npy`` array of ``shape`` and reserve its bytes on disk
    (see :func:`~segpipe.files.reserve_space`), ready to be filled through a memory map."""
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        reserve_space(f, f.tell(), math.prod(shape))


def build_split_cache(
    frame: pd.DataFrame,
    images_path: Path,
    masks_path: Path,
    geometry: Geometry,
    rule: MaskRule,
    *,
    threads: int = 0,
    desc: str = "cache",
) -> int:
    """Resize every pair of ``frame`` exactly as training would (albumentations' Resize:
    bilinear for images, nearest for masks; masks read by ``rule``; see
    :meth:`~segpipe.data.geometry.Geometry.for_cache`) into the arrays :func:`allocate` made.
    The pairs are decoded and resized on ``threads`` threads (see
    :func:`~segpipe.resources.ordered_map`) and written in order, under a progress bar named
    ``desc``. Returns the count."""
    shapes = cached_shapes(frame, geometry)

    def resized(pair: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        return geometry.for_cache(*read_pair(Path(pair[0]), Path(pair[1]), rule))

    pairs = list(zip(frame["image"], frame["mask"], strict=True))
    offset = 0  # pixels written so far
    with ArrayFile(images_path) as images, ArrayFile(masks_path) as masks:
        done = progress(
            ordered_map(resized, pairs, threads=threads), desc, total=len(pairs), unit="pair"
        )
        for i, (image, mask) in enumerate(done):
            if geometry.cache_side() is None and mask.shape != tuple(shapes[i]):
                raise SegpipeError(  # the file changed since the split stage ran
                    f"{pairs[i][0]}: its size differs from the one in the split; "
                    "rerun the split stage"
                )
            images.write(offset * 3, image)
            masks.write(offset, mask)
            offset += mask.size
    return len(frame)


class ArrayFile:
    """A uint8 ``.npy`` file made by :func:`allocate`, filled by writes at byte offsets of its
    data. Nothing is memory-mapped, so the process's memory stays flat however large the
    array: the pages go to the OS's file cache, not to the process."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "r+b")  # noqa: SIM115 (closed by __exit__)
        np.lib.format.read_magic(self.file)
        np.lib.format.read_array_header_1_0(self.file)
        self.start = self.file.tell()

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write(self, offset: int, values: np.ndarray) -> None:
        """Write ``values`` (C order) at byte ``offset`` of the data."""
        self.file.seek(self.start + offset)
        self.file.write(np.ascontiguousarray(values, dtype=np.uint8).data)


def run(
    splits_dir: Path,
    cache_dir: Path,
    geometry: Geometry,
    rule: MaskRule,
    *,
    splits: Sequence[str] = CACHED_SPLITS,
    threads: int | None = None,
) -> dict[str, int]:
    """Cache ``splits`` (the train and val splits) in ``geometry``; masks hold class indices
    by the split stage's ``rule`` (see :func:`~segpipe.data.masks.load_rule`), with
    :data:`~segpipe.constants.IGNORE` where ``ignore_index`` was.

    The pairs are decoded on ``threads`` threads (default :func:`~segpipe.resources.data_threads`;
    0 decodes them one by one); the arrays are the same either way.

    The disk space of all the arrays is reserved before any image is decoded; on a full disk
    (or any failed write) nothing is left behind and ``cache_dir`` stays as it was.
    """
    threads = data_threads() if threads is None else threads
    frames = {split: read_split(splits_dir / f"{split}.csv") for split in splits}
    inputs = {"--splits": splits_dir, "the dataset": dataset_folder(*frames.values())}
    require_apart(cache_dir, "--out", inputs)
    shapes = {split: array_shapes(frame, geometry) for split, frame in frames.items()}
    counts = {}
    try:
        with staged_dir(cache_dir) as staging:  # all arrays appear together, or none
            for split, shape in shapes.items():
                images_path, masks_path = cache_paths(staging, split)
                allocate(images_path, (*shape, 3))
                allocate(masks_path, shape)
                if geometry.cache_side() is None:
                    np.save(shapes_path(staging, split), cached_shapes(frames[split], geometry))
            for split, frame in frames.items():
                counts[split] = build_split_cache(
                    frame,
                    *cache_paths(staging, split),
                    geometry,
                    rule,
                    threads=threads,
                    desc=f"cache {split}",
                )
    except OSError as e:
        needed = sum(math.prod(shape) * 4 for shape in shapes.values()) / 2**20
        raise write_error(
            cache_dir,
            e,
            f"the arrays need {needed:.1f} MiB and {_free_mib(cache_dir):.1f} MiB is free; "
            "nothing in it was changed",
        ) from None
    size_mb = sum(p.stat().st_size for p in cache_dir.glob("*.npy")) / 2**20
    log.info("cached %s, %s (%.1f MiB)", counts, geometry.describe(), size_mb)
    return counts


def _free_mib(path: Path) -> float:
    """Free space on the disk that holds ``path`` (or would hold it), in MiB."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free / 2**20
