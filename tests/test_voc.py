"""data.format: voc. A tiny Pascal VOC tree (palette PNGs with 255 borders, image set lists)
through the download, split and cache stage scripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segpipe.data.source_report import read_source_report
from segpipe.data.tables import read_split
from segpipe.data.voc import VOC_CLASSES

from .annotations import write_voc_tree
from .helpers import TINY, stage_in_process, write_params
from .test_bad_inputs import error_line, snapshot, warnings_of

CLASSES = ["background", "disc", "square"]
TRAIN, VAL = list(range(6)), [6, 7, 8]
TINY_SPLIT = {key: value for key, value in TINY.items() if key.startswith("split__")}


def stem(i: int) -> str:
    return f"2007_{i:06d}"


def params_for(tmp_path: Path, root: Path, **edits: object) -> Path:
    return write_params(
        tmp_path / "params.yaml",
        **TINY_SPLIT,
        data__source="folder",
        data__format="voc",
        data__path=str(root),
        data__classes=CLASSES,
        data__ignore_index=255,
        **edits,
    )


def run_stage(script: str, params: Path, *args: object):
    return stage_in_process(script, "--params", params, *args)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """VOCdevkit/VOC2012 with 9 masked images (train.txt 6, val.txt 3) and one without a
    mask; ``data.path`` is the folder above VOCdevkit."""
    masks = write_voc_tree(
        tmp_path / "export" / "VOCdevkit" / "VOC2012", 9, lists={"train": TRAIN, "val": VAL}
    )
    return tmp_path / "export", masks


def test_voc_classes_are_the_21_of_pascal_voc():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"


def test_tree_is_copied_and_split_by_its_image_sets(tmp_path, tree):
    root, masks = tree
    voc = root / "VOCdevkit" / "VOC2012"
    params = params_for(tmp_path, root, data__voc__image_sets=True)
    raw, splits, cache = tmp_path / "raw", tmp_path / "splits", tmp_path / "cache"
    result = run_stage("download.py", params, "--out", raw)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (raw / "masks").iterdir()) == sorted(f"{s}.png" for s in masks)
    for name in masks:  # copied as they are: the palette PNGs VOC ships
        for sub, folder, ext in (
            ("images", "JPEGImages", "jpg"),
            ("masks", "SegmentationClass", "png"),
        ):
            copy, original = raw / sub / f"{name}.{ext}", voc / folder / f"{name}.{ext}"
            assert copy.read_bytes() == original.read_bytes()
    report = read_source_report(raw)
    assert report.counts == {"images_without_mask": 1, "pairs": 9}
    assert report.subsets == {"train": [stem(i) for i in TRAIN], "val": [stem(i) for i in VAL]}

    result = run_stage("split.py", params, "--raw", raw, "--out", splits)
    assert result.returncode == 0, result.stderr
    parts = {
        name: set(read_split(splits / f"{name}.csv")["stem"]) for name in ("train", "val", "test")
    }
    assert parts["test"] == {stem(i) for i in VAL}  # val.txt: VOC's published evaluation set
    assert len(parts["val"]) == round(len(TRAIN) * 0.25) and len(parts["train"]) == 4
    assert parts["val"] | parts["train"] == {stem(i) for i in TRAIN}
    summary = json.loads((splits / "report.json").read_text())
    assert summary["split_method"] == (
        "the image set lists: test is val.txt; val is 0.25 of train.txt (seed 42); train the rest "
        "of train.txt"
    )
    assert summary["mask_rule"]["rule"] == "indices" and summary["skipped"] == []
    pixels = sum(np.bincount(m.ravel(), minlength=256) for m in masks.values())
    assert summary["class_pixels"] == {str(c): int(pixels[c]) for c in range(3)}
    assert summary["ignored_pixels"] == int(pixels[255]) > 0  # the borders
    assert summary["source"]["format"] == "voc"

    result = run_stage("cache.py", params, "--splits", splits, "--out", cache)
    assert result.returncode == 0, result.stderr
    cached = np.load(cache / "train_masks.npy")
    assert cached.shape[0] == 4 and set(np.unique(cached)) <= {0, 1, 2, 255}


def test_test_txt_with_masks_is_the_test_split(tmp_path):
    root = tmp_path / "voc"
    write_voc_tree(root, 9, lists={"train": [0, 1, 2, 3, 4], "val": [5, 6], "test": [7, 8]})
    params = params_for(tmp_path, root, data__voc__image_sets=True)
    raw, splits = tmp_path / "raw", tmp_path / "splits"
    assert run_stage("download.py", params, "--out", raw).returncode == 0
    assert run_stage("split.py", params, "--raw", raw, "--out", splits).returncode == 0
    parts = {
        name: sorted(read_split(splits / f"{name}.csv")["stem"])
        for name in ("train", "val", "test")
    }
    assert parts == {
        "train": [stem(i) for i in range(5)],
        "val": [stem(5), stem(6)],
        "test": [stem(7), stem(8)],
    }


def test_without_image_sets_the_split_is_random(tmp_path, tree):
    root, masks = tree
    params = params_for(tmp_path, root)
    raw, splits = tmp_path / "raw", tmp_path / "splits"
    assert run_stage("download.py", params, "--out", raw).returncode == 0
    assert read_source_report(raw).subsets is None
    assert run_stage("split.py", params, "--raw", raw, "--out", splits).returncode == 0
    summary = json.loads((splits / "report.json").read_text())
    assert summary["split_method"].startswith("random") and summary["valid_pairs"] == len(masks)


def test_bad_trees_and_lists(tmp_path, tree):
    root, _ = tree
    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    raw = tmp_path / "raw"
    params = params_for(tmp_path, root, data__voc__image_sets=True)
    assert run_stage("download.py", params, "--out", raw).returncode == 0
    before = snapshot(raw)

    (sets / "val.txt").write_text(f"{stem(6)}\n{stem(0)}\n")
    assert error_line(run_stage("download.py", params, "--out", raw)) == (
        f"error: {sets}: train.txt and val.txt both list {stem(0)}; an image in two subsets "
        "would be trained and tested on"
    )
    (sets / "val.txt").unlink()
    assert error_line(run_stage("download.py", params, "--out", raw)) == (
        f"error: data.voc.image_sets: {sets}/val.txt not found; set data.voc.image_sets: false "
        "to split the images at random"
    )
    assert snapshot(raw) == before  # a failed run leaves the last output as it was
    (sets / "val.txt").write_text("".join(f"{stem(i)}\n" for i in [*VAL, 42]))
    (voc / "SegmentationClass" / f"{stem(9)}.png").write_bytes(
        (voc / "SegmentationClass" / f"{stem(0)}.png").read_bytes()
    )  # a mask without its image
    (voc / "JPEGImages" / f"{stem(9)}.jpg").rename(tmp_path / "aside.jpg")
    result = run_stage("download.py", params, "--out", raw)
    voc_warnings = [w for w in warnings_of(result) if "DVC cannot track" not in w]  # tmp_path
    assert [line.split(": ", 1)[1] for line in voc_warnings] == [
        f"file SegmentationClass/{stem(9)}.png: no image JPEGImages/{stem(9)}.<ext> for this "
        "mask: not used",
        f"ImageSets/Segmentation/val.txt: '{stem(42)}': listed, but no JPEGImages image with a "
        "SegmentationClass mask has this name: left out",
    ]
    after = snapshot(raw)
    assert after.pop("source.json") != before.pop("source.json")  # it names both problems
    assert after == before  # the same pairs
    (root / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    (root / "VOCdevkit" / "VOC2007" / "SegmentationClass").mkdir()
    assert error_line(run_stage("download.py", params, "--out", raw)) == (
        f"error: {root}: 2 VOC trees found (VOCdevkit/VOC2007, VOCdevkit/VOC2012); set "
        "data.path to one"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_line(run_stage("download.py", params_for(tmp_path, empty), "--out", raw)) == (
        f"error: {empty}: no folder with JPEGImages/ and SegmentationClass/ found (a Pascal VOC "
        "tree, such as VOCdevkit/VOC2012)"
    )
