"""Dataset, transforms and mask reading: shapes, dtypes, values, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segpipe.data.dataset import SegmentationDataset, build_transform
from segpipe.data.images import read_image
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError
from segpipe.training.seeding import seed_worker

from .helpers import read_mask


def test_training_items(splits_dir):
    frame = read_split(splits_dir / "train.csv")
    rule = load_rule(splits_dir / RULE_FILE)
    ds = SegmentationDataset(frame, build_transform(64, augment=True, seed=0), rule)
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1}
    # ImageNet normalisation: values centred near zero, not in [0, 255].
    assert -3.0 < image.min() < 0 < image.max() < 3.0
    assert any(ds[i][1].any() for i in range(len(ds)))


def test_augmentation_is_seeded(splits_dir):
    frame = read_split(splits_dir / "train.csv")

    def draws(seed):
        ds = SegmentationDataset(
            frame, build_transform(64, augment=True, seed=seed), MaskRule("0/255", 2)
        )
        return torch.stack([ds[0][0] for _ in range(6)])

    assert torch.equal(draws(1), draws(1))
    assert not torch.equal(draws(1), draws(2))
    assert len({tuple(x.flatten()[:50].tolist()) for x in draws(1)}) > 1, "draws vary"


def test_workers_get_distinct_reproducible_augmentations(splits_dir):
    frame = read_split(splits_dir / "train.csv").iloc[[0] * 4]
    ds = SegmentationDataset(frame, build_transform(64, augment=True, seed=0), MaskRule("0/255", 2))

    def batches():
        loader = DataLoader(
            ds,
            batch_size=2,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(0),
        )
        return torch.cat([images for images, _ in loader])

    first, second = batches(), batches()
    assert torch.equal(first, second)
    # Items 0 and 2 are the same file, drawn by different workers: not the same augmentation.
    assert not torch.equal(first[0], first[2])


def test_validation_transform_is_deterministic(splits_dir):
    frame = read_split(splits_dir / "val.csv")
    ds = SegmentationDataset(
        frame, build_transform(64, augment=False, seed=0), MaskRule("0/255", 2)
    )
    assert torch.equal(ds[0][0], ds[0][0])


@pytest.mark.parametrize("scale", [1, 255])
def test_binary_masks_0_1_and_0_255(tmp_path, scale):
    values = np.array([[0, 1], [1, 0]], dtype=np.uint8) * scale
    Image.fromarray(values).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", 2).tolist() == [[0, 1], [1, 0]]


def test_rgb_mask_and_grayscale_image_are_converted(tmp_path):
    Image.new("RGB", (4, 3), (255, 255, 255)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", 2).tolist() == [[1] * 4] * 3
    Image.new("L", (4, 3), 7).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (3, 4, 3)


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SegpipeError, match="empty.png: cannot read image"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(SegpipeError, match="gone.png: file not found"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(SegpipeError, match="splits.csv: split file not found"):
        read_split(tmp_path / "splits.csv")


def test_mask_size_mismatch(tmp_path):
    import pandas as pd

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (8, 6)).save(tmp_path / "a_mask.png")
    frame = pd.DataFrame(
        {"image": [str(tmp_path / "a.png")], "mask": [str(tmp_path / "a_mask.png")]}
    )
    ds = SegmentationDataset(frame, build_transform(32, augment=False, seed=0), MaskRule("0/1", 2))
    with pytest.raises(SegpipeError, match="a_mask.png: mask size 8x6 differs from image size 8x8"):
        ds[0]
