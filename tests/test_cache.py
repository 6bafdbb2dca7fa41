"""The cache stage: arrays equal to what the on-the-fly pipeline produces."""

from __future__ import annotations

import numpy as np
import torch

from segpipe import cache
from segpipe.dataset import CachedDataset, SegmentationDataset, build_transform, read_split
from segpipe.masks import RULE_FILE, load_rule


def test_cache_matches_decoding_on_the_fly(splits_dir, cache_dir, params):
    size = params.train.image_size
    for split in ("train", "val", "test"):
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


def test_cached_dataset_is_memory_mapped_and_picklable(cache_dir):
    import pickle

    ds = CachedDataset(*cache.cache_paths(cache_dir, "train"), build_transform(64, True, 0))
    ds[0]
    assert isinstance(ds._images, np.memmap)
    clone = pickle.loads(pickle.dumps(ds))  # noqa: S301 - our own object
    assert clone._images is None and len(clone) == len(ds)
    assert clone[1][0].shape == (3, 64, 64)
