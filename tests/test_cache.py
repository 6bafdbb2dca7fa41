"""The cache stage: arrays equal to what the on-the-fly pipeline produces."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from segpipe.data import cache
from segpipe.data.dataset import CachedDataset, SegmentationDataset, build_transform
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError


def test_cache_matches_decoding_on_the_fly(splits_dir, cache_dir, params):
    size = params.train.image_size
    assert cache.CACHED_SPLITS == ("train", "val")  # what training reads; nothing reads test
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "train_images.npy",
        "train_masks.npy",
        "val_images.npy",
        "val_masks.npy",
    ]
    for split in cache.CACHED_SPLITS:
        images_path, masks_path = cache.cache_paths(cache_dir, split)
        images, masks = np.load(images_path), np.load(masks_path)
        frame = read_split(splits_dir / f"{split}.csv")
        assert images.shape == (len(frame), size, size, 3) and images.dtype == np.uint8
        assert masks.shape == (len(frame), size, size) and set(np.unique(masks)) <= {0, 1}
    transform = build_transform(size, augment=False, seed=0)
    cached = CachedDataset(*cache.cache_paths(cache_dir, "val"), transform)
    rule = load_rule(splits_dir / RULE_FILE, params.data)
    direct = SegmentationDataset(read_split(splits_dir / "val.csv"), transform, rule)
    assert len(cached) == len(direct)
    for i in range(len(cached)):
        (ci, cm), (di, dm) = cached[i], direct[i]
        assert torch.equal(cm, dm)
        assert torch.allclose(ci, di, atol=1e-6)


@pytest.mark.parametrize(
    "geometry",
    [Geometry.squash(32), Geometry(resize="longest_side", image_size=32, crop=16, scale=0.5)],
)
def test_threads_write_the_same_arrays(tmp_path, splits_dir, params, geometry):
    """Pairs decoded on a thread pool fill the arrays the one-by-one decoding fills, byte for
    byte (fixed squares, and the flat arrays of crop training)."""
    rule = load_rule(splits_dir / RULE_FILE, params.data)
    written = {}
    for threads in (0, 3):
        out = tmp_path / f"cache{threads}"
        counts = cache.run(splits_dir, out, geometry, rule, threads=threads)
        written[threads] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert counts == {s: len(read_split(splits_dir / f"{s}.csv")) for s in cache.CACHED_SPLITS}
    assert written[0] == written[3] and len(written[0]) >= 4


def test_cached_dataset_is_memory_mapped_and_picklable(cache_dir):
    import pickle

    ds = CachedDataset(
        *cache.cache_paths(cache_dir, "train"), build_transform(64, augment=True, seed=0)
    )
    ds[0]
    assert isinstance(ds._images, np.memmap)
    clone = pickle.loads(pickle.dumps(ds))  # noqa: S301 - our own object
    assert clone._images is None and len(clone) == len(ds)
    assert clone[1][0].shape == (3, 64, 64)


def _fail_with(code: int):
    def fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    return fallocate


def test_cache_space_is_reserved_before_any_image_is_decoded(
    tmp_path, splits_dir, cache_dir, params, monkeypatch
):
    """A memory map of a sparse file dies of SIGBUS on a full disk; reserved blocks cannot."""
    reserved, read = [], []
    fallocate, read_pair = os.posix_fallocate, cache.read_pair

    def spy(fd: int, offset: int, length: int) -> None:
        reserved.append((len(read), length))
        fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", spy)
    monkeypatch.setattr(cache, "read_pair", lambda *a: read.append(a) or read_pair(*a))
    cache.run(
        splits_dir,
        tmp_path / "again",
        Geometry.from_train(params.train),
        load_rule(splits_dir / RULE_FILE),
    )
    sizes = [n * 64 * 64 * k for n in (12, 6) for k in (3, 1)]  # train, val
    assert reserved == [(0, size) for size in sizes]
    for name in os.listdir(cache_dir):  # byte for byte what open_memmap wrote before
        assert (tmp_path / "again" / name).read_bytes() == (cache_dir / name).read_bytes()

    monkeypatch.setattr(os, "posix_fallocate", _fail_with(errno.EOPNOTSUPP))  # zeros instead
    cache.run(
        splits_dir,
        tmp_path / "zeros",
        Geometry.from_train(params.train),
        load_rule(splits_dir / RULE_FILE),
    )
    for name in os.listdir(cache_dir):
        assert (tmp_path / "zeros" / name).read_bytes() == (cache_dir / name).read_bytes()


def test_full_disk_leaves_the_cache_and_no_staging_folder(
    tmp_path, splits_dir, cache_dir, params, monkeypatch
):
    before = {p.name: p.read_bytes() for p in cache_dir.iterdir()}
    monkeypatch.setattr(os, "posix_fallocate", _fail_with(errno.ENOSPC))
    with pytest.raises(SegpipeError, match=r"cache: cannot write \(no space left on device\); "):
        cache.run(
            splits_dir,
            cache_dir,
            Geometry.from_train(params.train),
            load_rule(splits_dir / RULE_FILE),
        )
    assert {p.name: p.read_bytes() for p in cache_dir.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "raw", "splits"]
