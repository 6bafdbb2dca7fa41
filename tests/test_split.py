"""The split stage: pairing by stem, deterministic and disjoint splits."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from segpipe import split
from segpipe.config import SplitConfig
from segpipe.errors import SegpipeError


def read_splits(folder):
    return {name: pd.read_csv(folder / f"{name}.csv") for name in split.SPLITS}


def test_deterministic_disjoint_complete(tmp_path, raw_dir, params):
    counts = split.run(params.split, params.seed, raw_dir, tmp_path / "a")
    split.run(params.split, params.seed, raw_dir, tmp_path / "b")
    for name in split.SPLITS:
        assert (tmp_path / "a" / f"{name}.csv").read_bytes() == (
            tmp_path / "b" / f"{name}.csv"
        ).read_bytes()
    frames = read_splits(tmp_path / "a")
    stems = [set(f["stem"]) for f in frames.values()]
    assert sum(len(s) for s in stems) == 24 == len(set.union(*stems))
    assert counts == {name: len(f) for name, f in frames.items()}
    assert counts["test"] == 6 and counts["val"] == 6 and counts["train"] == 12
    test = frames["test"]
    assert list(test.columns) == ["stem", "image", "mask", "height", "width"]
    first = test.iloc[0]
    assert Image.open(first["image"]).size == (first["width"], first["height"])
    assert first["mask"].endswith(f"masks/{first['stem']}.png")


def test_other_seed_other_split(tmp_path, raw_dir, params):
    split.run(params.split, 1, raw_dir, tmp_path / "a")
    split.run(params.split, 2, raw_dir, tmp_path / "b")
    a, b = read_splits(tmp_path / "a"), read_splits(tmp_path / "b")
    assert set(a["test"]["stem"]) != set(b["test"]["stem"])


def test_split_sizes_follow_fractions():
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2)
    names = split.assign_splits(1000, cfg, seed=0)
    assert (names == "test").sum() == 200
    assert (names == "val").sum() == 100
    assert (names == "train").sum() == 700


def test_too_few_images_for_the_fractions():
    cfg = SplitConfig(val_fraction=0.15, test_fraction=0.15)
    with pytest.raises(SegpipeError, match="2 image\\(s\\) are too few"):
        split.assign_splits(2, cfg, seed=0)
    assert len(split.assign_splits(3, cfg, seed=0)) == 3


def test_unpaired_files_are_skipped_with_a_warning(tmp_path, raw_dir, params, caplog):
    (raw_dir / "masks" / "syn_00000.png").unlink()
    Image.new("L", (8, 8)).save(raw_dir / "masks" / "orphan.png")
    frame = split.pair_files(raw_dir)
    assert len(frame) == 23
    assert "syn_00000" not in set(frame["stem"])
    assert "no mask with the same stem" in caplog.text
    assert "no image with the same stem" in caplog.text


def test_duplicate_stems_and_empty_dataset(tmp_path, raw_dir):
    Image.new("RGB", (8, 8)).save(raw_dir / "images" / "syn_00001.jpg")
    with pytest.raises(SegpipeError, match="two files share the stem 'syn_00001'"):
        split.pair_files(raw_dir)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(SegpipeError, match="no image/mask pairs"):
        split.pair_files(empty)
    with pytest.raises(SegpipeError, match="folder not found"):
        split.pair_files(tmp_path / "missing")
