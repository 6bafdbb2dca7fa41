"""The split stage: pairing by stem, validation, deterministic and disjoint splits, the report."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segpipe.config import SplitConfig, SplitLists
from segpipe.data import split
from segpipe.data.images import UnreadableImageError, open_image, read_image
from segpipe.data.masks import MaskRule
from segpipe.data.tables import read_split
from segpipe.data.validate import DatasetCheck
from segpipe.errors import SegpipeError

from .helpers import read_mask


def read_splits(folder):
    return {name: read_split(folder / f"{name}.csv") for name in split.SPLITS}


def test_deterministic_disjoint_complete(tmp_path, raw_dir, params):
    counts = split.run(params.split, params.seed, raw_dir, tmp_path / "a")
    split.run(params.split, params.seed, raw_dir, tmp_path / "b")
    for name in (*(f"{s}.csv" for s in split.SPLITS), "mask_rule.json", "report.json", "report.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    frames = read_splits(tmp_path / "a")
    stems = [set(f["stem"]) for f in frames.values()]
    assert sum(len(s) for s in stems) == 24 == len(set.union(*stems))
    assert counts == {name: len(f) for name, f in frames.items()}
    assert counts["test"] == 6 and counts["val"] == 6 and counts["train"] == 12
    test = frames["test"]
    assert list(test.columns) == ["stem", "image", "mask", "height", "width", "fg_fraction"]
    first = test.iloc[0]
    assert Image.open(first["image"]).size == (first["width"], first["height"])
    assert first["mask"].endswith(f"masks/{first['stem']}.png")
    fg = (np.asarray(Image.open(first["mask"])) >= 128).mean()
    assert first["fg_fraction"] == pytest.approx(fg, abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "raw"]  # no staging left


def test_other_seed_other_split(tmp_path, raw_dir, params):
    split.run(params.split, 1, raw_dir, tmp_path / "a")
    split.run(params.split, 2, raw_dir, tmp_path / "b")
    a, b = read_splits(tmp_path / "a"), read_splits(tmp_path / "b")
    assert set(a["test"]["stem"]) != set(b["test"]["stem"])


def test_split_sizes_follow_fractions():
    cfg = SplitConfig(seed=0, val_fraction=0.1, test_fraction=0.2)
    names = split.assign_splits(1000, cfg, seed=0)
    assert (names == "test").sum() == 200
    assert (names == "val").sum() == 100
    assert (names == "train").sum() == 700


def test_too_few_images_for_the_fractions():
    cfg = SplitConfig(seed=0, val_fraction=0.15, test_fraction=0.15)
    with pytest.raises(SegpipeError, match="2 image\\(s\\) are too few"):
        split.assign_splits(2, cfg, seed=0)
    assert len(split.assign_splits(3, cfg, seed=0)) == 3


def test_too_few_counts_only_valid_pairs(tmp_path, raw_dir, params):
    for path in sorted((raw_dir / "images").iterdir())[2:]:
        path.write_bytes(b"")
    with pytest.raises(SegpipeError, match=r"2 image\(s\) are too few.*22 file\(s\) skipped"):
        split.run(params.split, params.seed, raw_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpaired_files_are_skipped_with_a_warning(tmp_path, raw_dir, params, caplog):
    (raw_dir / "masks" / "syn_00000.png").unlink()
    Image.new("L", (8, 8)).save(raw_dir / "masks" / "orphan.png")
    check = DatasetCheck(2)
    frame = split.pair_files(raw_dir, check)
    assert len(frame) == 23
    assert "syn_00000" not in set(frame["stem"])
    assert "no mask with the same stem" in caplog.text
    assert "no image with the same stem" in caplog.text
    assert [(s.stem, s.kind) for s in check.skipped] == [
        ("syn_00000", "no_mask"),
        ("orphan", "no_image"),
    ]


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


def break_dataset(raw_dir):
    """Every kind of skippable problem, plus images in other colour modes."""
    images, masks = raw_dir / "images", raw_dir / "masks"
    (masks / "syn_00000.png").unlink()  # image without mask
    Image.new("L", (8, 8)).save(masks / "orphan.png")  # mask without image
    (images / "syn_00001.png").write_bytes(b"")  # zero-byte image
    data = (masks / "syn_00002.png").read_bytes()
    (masks / "syn_00002.png").write_bytes(data[: len(data) // 2])  # truncated mask
    Image.new("L", (7, 5)).save(masks / "syn_00003.png")  # wrong size
    (images / "syn_00004.png").write_text("not an image")
    for stem, mode in (("syn_00005", "L"), ("syn_00006", "RGBA"), ("syn_00007", "P")):
        path = images / f"{stem}.png"
        Image.open(path).convert(mode).save(path)


def test_report_counts_histogram_and_skipped(tmp_path, raw_dir, params, caplog):
    break_dataset(raw_dir)
    counts = split.run(params.split, params.seed, raw_dir, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["valid_pairs"] == 19 == sum(counts.values())
    assert report["splits"] == counts == {"train": 9, "val": 5, "test": 5}
    assert report["files"] == {"images": 24, "masks": 24}
    assert report["num_classes"] == 2
    assert report["image_modes"] == {"L": 1, "P": 1, "RGB": 16, "RGBA": 1}
    assert report["mask_modes"] == {"L": 19}
    assert list(report["mask_values"]) == ["0", "255"]
    frames = pd.concat(read_splits(tmp_path / "out").values())
    pixels = int((frames["height"] * frames["width"]).sum())
    assert sum(report["mask_values"].values()) == pixels
    assert report["mask_values"]["255"] == round(
        (frames["fg_fraction"] * frames["height"] * frames["width"]).sum()
    )
    for side in ("height", "width"):
        spread = report["image_size"][side]
        assert spread["min"] == frames[side].min() and spread["max"] == frames[side].max()
        assert spread["median"] == frames[side].median()
    fg = report["foreground_fraction"]
    assert (
        fg["min"] <= fg["mean"] <= fg["max"]
        and fg["empty_masks"] == (frames["fg_fraction"] == 0).sum()
    )
    skipped = {(s["stem"], s["kind"]): s for s in report["skipped"]}
    assert sorted(skipped) == [
        ("orphan", "no_image"),
        ("syn_00000", "no_mask"),
        ("syn_00001", "unreadable_image"),
        ("syn_00002", "unreadable_mask"),
        ("syn_00003", "size_mismatch"),
        ("syn_00004", "unreadable_image"),
    ]
    assert report["skipped_count"] == 6
    assert report["skipped_by_kind"] == {
        "no_image": 1,
        "no_mask": 1,
        "size_mismatch": 1,
        "unreadable_image": 2,
        "unreadable_mask": 1,
    }
    assert (
        skipped["syn_00001", "unreadable_image"]["reason"]
        == "cannot read image (empty file, 0 bytes)"
    )
    assert "truncated" in skipped["syn_00002", "unreadable_mask"]["reason"]
    assert skipped["syn_00002", "unreadable_mask"]["file"].endswith("masks/syn_00002.png")
    assert "not a recognised image format" in skipped["syn_00004", "unreadable_image"]["reason"]
    mismatch = skipped["syn_00003", "size_mismatch"]["reason"]
    assert (
        mismatch.startswith("mask size 7x5 differs from image size") and "syn_00003.png" in mismatch
    )
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert (
        "| valid pairs | 19 |" in markdown and "Image modes: L 1, P 1, RGB 16, RGBA 1" in markdown
    )
    assert "- `" + skipped["syn_00003", "size_mismatch"]["file"] + "`: mask size 7x5" in markdown
    assert caplog.text.count("skipped ") == 7  # six files, then the summary


def test_report_md_lists_at_most_50_skipped(tmp_path, raw_dir, params, caplog):
    for i in range(60):
        Image.new("L", (4, 4)).save(raw_dir / "masks" / f"orphan_{i:02d}.png")
    split.run(params.split, params.seed, raw_dir, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["skipped"]) == 60
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown.count("no image with the same stem") == 50
    assert "and 10 more (see report.json)" in markdown
    assert caplog.text.count("no image with the same stem") == 20  # then one line for the rest
    assert caplog.text.count("more files skipped: not logged one by one") == 1


def test_a_failed_run_leaves_the_earlier_output(tmp_path, raw_dir, params, monkeypatch):
    out = tmp_path / "out"
    split.run(params.split, params.seed, raw_dir, out)
    (out / "extra.txt").write_text("from before")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(report):
        raise KeyboardInterrupt

    monkeypatch.setattr(split, "render_markdown", crash)  # after the CSVs are staged
    with pytest.raises(KeyboardInterrupt):
        split.run(params.split, params.seed + 1, raw_dir, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]
    monkeypatch.undo()
    split.run(params.split, params.seed, raw_dir, out)  # a good run replaces the whole folder
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mask_rule.json", "report.json", "report.md", "test.csv", "train.csv", "val.csv"]
    )


def test_output_folder_must_not_hold_the_dataset(tmp_path, raw_dir, params):
    with pytest.raises(SegpipeError, match="holds --raw"):
        split.run(params.split, params.seed, raw_dir, tmp_path)
    assert (raw_dir / "images").is_dir()


def test_multiclass_values_must_fit_the_classes(tmp_path, raw_dir, params):
    for path in (raw_dir / "masks").iterdir():
        values = (np.asarray(Image.open(path)) > 0).astype(np.uint8) * 2
        Image.fromarray(values).save(path)
    counts = split.run(params.split, params.seed, raw_dir, tmp_path / "ok", num_classes=3)
    assert sum(counts.values()) == 24
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert set(report["mask_values"]) == {"0", "2"} and report["num_classes"] == 3
    bad = raw_dir / "masks" / "syn_00004.png"
    values = np.zeros_like(np.asarray(Image.open(bad)))  # the image's size: a pair in use
    values[0, :4] = [0, 1, 5, 9]
    Image.fromarray(values).save(bad)
    with pytest.raises(
        SegpipeError, match=r"syn_00004.png: mask values \[5, 9\] fit none of the 3"
    ):
        split.run(params.split, params.seed, raw_dir, tmp_path / "bad", num_classes=3)
    assert not (tmp_path / "bad").exists()


def test_the_grey_rule_reads_any_8bit_value(tmp_path):
    values = np.array([[0, 3, 127], [128, 200, 255]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert MaskRule("grey", 2).read(tmp_path / "m.png").tolist() == [[0, 0, 0], [1, 1, 1]]
    # Six levels, a third of them in the middle, are no 0/255 mask with noise: no rule reads
    # them (before, each file was thresholded at 128 on its own).
    with pytest.raises(SegpipeError, match="fit no two-class rule"):
        read_mask(tmp_path / "m.png", 2)


def test_truncation_is_found_by_decoding(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    assert Image.open(tmp_path / "a.png").size == (32, 32)  # the header alone looks fine
    with pytest.raises(UnreadableImageError, match="a.png: cannot read image") as err:
        open_image(tmp_path / "a.png")
    assert err.value.reason.startswith("truncated or corrupt")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "I;16"])
def test_other_modes_are_read_as_rgb(tmp_path, mode):
    Image.new(mode, (5, 3)).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8


def test_threads_write_the_same_outputs_and_warnings(tmp_path, raw_dir, params, caplog):
    """Pairs read on a thread pool give the CSVs, rule and report of the one-by-one reading,
    byte for byte, and the same warnings in the same order."""
    break_dataset(raw_dir)
    outputs, warnings = {}, {}
    for threads in (0, 3):
        caplog.clear()
        out = tmp_path / "out"
        split.run(params.split, params.seed, raw_dir, out, threads=threads)
        outputs[threads] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        warnings[threads] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert outputs[0] == outputs[3] and len(outputs[0]) == 6
    assert warnings[0] == warnings[3] and len(warnings[0]) >= 6


def write_lists(folder, **lists):
    """One text file per split (``train=["0001", ...]``); returns ``split.lists``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, stems in lists.items():
        (folder / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    files = {name: str(folder / f"{name}.txt") for name in lists}
    return SplitLists(train=files["train"], test=files["test"], val=files.get("val"))


def stems_of(raw_dir):
    return sorted(p.stem for p in (raw_dir / "images").iterdir())


def test_split_lists_make_the_split(tmp_path, raw_dir, params):
    stems = stems_of(raw_dir)
    lists = write_lists(tmp_path / "lists", train=stems[:16], val=stems[16:18], test=stems[18:])
    cfg = dataclasses.replace(params.split, lists=lists)
    counts = split.run(cfg, 0, raw_dir, tmp_path / "out", lists_dir=tmp_path / "lists")
    assert counts == {"train": 16, "val": 2, "test": len(stems) - 18}
    got = read_splits(tmp_path / "out")
    assert sorted(got["test"]["stem"]) == stems[18:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["split_method"].startswith("the split lists: train ")


def test_without_a_val_list_val_is_carved_from_train(tmp_path, raw_dir, params, caplog):
    stems = stems_of(raw_dir)
    lists = write_lists(tmp_path / "lists", train=stems[:19], test=stems[19:23])  # 1 unlisted
    cfg = dataclasses.replace(params.split, lists=lists, val_fraction=0.25)
    counts = split.run(cfg, 7, raw_dir, tmp_path / "out")
    assert counts == {"train": 14, "val": 5, "test": 4}
    got = read_splits(tmp_path / "out")
    assert set(got["train"]["stem"]) | set(got["val"]["stem"]) == set(stems[:19])
    assert "1 pair(s) are in no list and left out" in caplog.text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["split_method"].endswith("val is 0.25 of train (seed 7)")


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        (
            {"train": ["a", "missing_one"], "test": ["b"]},
            "split.lists.train: 1 stem(s), e.g. 'missing_one', are no valid image/mask pair",
        ),
        ({"train": ["a", "c", "a"], "test": ["b"]}, "lists 'a' twice (lines 1 and 3)"),
        ({"train": ["a", "c"], "test": ["c"]}, "'c' is in both"),
    ],
    ids=["missing-stem", "duplicate", "overlap"],
)
def test_bad_split_lists_fail_in_one_line(tmp_path, raw_dir, params, lists, message):
    stems = stems_of(raw_dir)
    named = {"a": stems[0], "b": stems[1], "c": stems[2], "missing_one": "missing_one"}
    lists = write_lists(tmp_path / "lists", **{k: [named[s] for s in v] for k, v in lists.items()})
    cfg = dataclasses.replace(params.split, lists=lists)
    (tmp_path / "out").mkdir()
    with pytest.raises(SegpipeError) as err:
        split.run(cfg, 0, raw_dir, tmp_path / "out")
    text = str(err.value)
    assert "\n" not in text
    assert message.replace("'a'", repr(stems[0])).replace("'c'", repr(stems[2])) in text
    assert list((tmp_path / "out").iterdir()) == []  # nothing written


def test_a_list_outside_the_lists_folder_or_missing(tmp_path, raw_dir, params):
    stems = stems_of(raw_dir)
    lists = write_lists(tmp_path / "elsewhere", train=stems[:10], test=stems[10:])
    cfg = dataclasses.replace(params.split, lists=lists)
    with pytest.raises(SegpipeError, match=r"split.lists.train: .* is outside .*lists/"):
        split.run(cfg, 0, raw_dir, tmp_path / "out", lists_dir=tmp_path / "lists")
    gone = dataclasses.replace(lists, test=str(tmp_path / "nope.txt"))
    with pytest.raises(SegpipeError, match=r"split.lists.test: .*nope.txt cannot be read"):
        split.run(dataclasses.replace(cfg, lists=gone), 0, raw_dir, tmp_path / "out")


def test_folders_keep_a_train_val_test_layout(tmp_path, raw_dir, params):
    layout = tmp_path / "layout"
    stems = stems_of(raw_dir)
    for i, stem in enumerate(stems):
        folder = "train" if i < 16 else "test"  # no val/: carved from train
        for kind in ("images", "masks"):
            src = next((raw_dir / kind).glob(f"{stem}.*"))
            (layout / kind / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, layout / kind / folder / src.name)
    cfg = dataclasses.replace(params.split, lists="folders", val_fraction=0.25)
    counts = split.run(cfg, 0, layout, tmp_path / "out")
    assert counts == {"train": 12, "val": 4, "test": len(stems) - 16}
    assert all(s.startswith("test/") for s in read_splits(tmp_path / "out")["test"]["stem"])
    for kind in ("images", "masks"):
        (layout / kind / "other").mkdir()
        shutil.move(next((layout / kind / "test").iterdir()), layout / kind / "other")
    with pytest.raises(SegpipeError, match=r"split.lists: folders: pair 'other/.*' is in no"):
        split.run(cfg, 0, layout, tmp_path / "out2")


def folds_of(assign, k):
    """``assign(cfg)`` for every fold of ``k``: the split names of each."""
    return [
        assign(SplitConfig(seed=0, val_fraction=0.15, test_fraction=0.2, folds=k, fold=i))
        for i in range(k)
    ]


def test_folds_keep_the_test_split_and_cover_the_rest_once_as_val():
    plain = split.assign_splits(23, SplitConfig(seed=0, val_fraction=0.15, test_fraction=0.2), 7)
    folds = folds_of(lambda cfg: split.assign_splits(23, cfg, 7), 5)
    test = set(np.flatnonzero(plain == "test"))
    rest = set(range(23)) - test
    val_sizes = []
    for names in folds:
        assert set(np.flatnonzero(names == "test")) == test  # the test split the seed gives
        val, train = set(np.flatnonzero(names == "val")), set(np.flatnonzero(names == "train"))
        assert val | train == rest and not val & train
        val_sizes.append(len(val))
    vals = [set(np.flatnonzero(names == "val")) for names in folds]
    assert set.union(*vals) == rest and sum(val_sizes) == len(rest) == 18  # each once
    assert sorted(val_sizes) == [3, 3, 4, 4, 4]  # near-equal parts
    again = folds_of(lambda cfg: split.assign_splits(23, cfg, 7), 5)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    other = folds_of(lambda cfg: split.assign_splits(23, cfg, 8), 5)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other, strict=True))


def test_folds_need_a_validation_pair_each():
    cfg = SplitConfig(seed=0, val_fraction=0.15, test_fraction=0.5, folds=5, fold=0)
    with pytest.raises(SegpipeError) as err:
        split.assign_splits(8, cfg, 0)
    assert str(err.value) == (
        "split.folds: 5 folds need at least 5 non-test pairs (one validation pair per fold), "
        "the data has 4; lower split.folds"
    )
    assert (split.assign_splits(10, cfg, 0) == "val").sum() == 1


def test_folds_rotate_a_train_list_and_the_report_names_the_fold(tmp_path, raw_dir, params):
    stems = stems_of(raw_dir)
    lists = write_lists(tmp_path / "lists", train=stems[:19], test=stems[19:23])  # 1 unlisted
    vals = []
    for fold in range(3):
        cfg = dataclasses.replace(params.split, lists=lists, folds=3, fold=fold)
        out = tmp_path / f"fold{fold}"
        counts = split.run(cfg, 7, raw_dir, out)
        got = read_splits(out)
        assert sorted(got["test"]["stem"]) == stems[19:23]
        assert set(got["train"]["stem"]) | set(got["val"]["stem"]) == set(stems[:19])
        assert counts["val"] in (6, 7)
        vals.append(set(got["val"]["stem"]))
        method = json.loads((out / "report.json").read_text())["split_method"]
        assert method.endswith(
            f"train cut into 3 folds (seed 7); val is fold {fold} of 3 (0..2), train the other "
            "2 folds"
        )
        assert f"fold {fold} of 3" in (out / "report.md").read_text()
    assert set.union(*vals) == set(stems[:19]) and sum(map(len, vals)) == 19


def test_the_random_split_report_names_the_fold(tmp_path, raw_dir, params):
    cfg = dataclasses.replace(params.split, folds=5, fold=2)
    split.run(cfg, 3, raw_dir, tmp_path / "out")
    method = json.loads((tmp_path / "out" / "report.json").read_text())["split_method"]
    assert method == (
        "random: a permutation (seed 3) cut into test and 5 folds of the rest; val is fold 2 "
        "of 5 (0..4), train the other 4 folds"
    )
    plain = split.run(params.split, 3, raw_dir, tmp_path / "plain")
    assert read_splits(tmp_path / "plain")["test"].equals(read_splits(tmp_path / "out")["test"])
    assert plain["test"] == 6  # 24 pairs, test_fraction 0.25


def test_folds_with_a_given_val_split_fail_in_one_line(tmp_path, raw_dir, params):
    stems = stems_of(raw_dir)
    lists = write_lists(tmp_path / "lists", train=stems[:16], val=stems[16:18], test=stems[18:])
    cfg = dataclasses.replace(params.split, lists=lists, folds=3, fold=0)
    with pytest.raises(SegpipeError) as err:
        split.run(cfg, 0, raw_dir, tmp_path / "out")
    assert str(err.value) == (
        "split.folds: split.lists (a val list or folder) gives the val split, which folds would "
        "replace; set split.folds: null, or give no val split"
    )
    assert not (tmp_path / "out").exists()


def test_folds_rotate_voc_train_lists_and_refuse_a_given_val():
    stems = [f"{i:04d}" for i in range(12)]
    subsets = {"train": stems[:10], "val": stems[10:]}  # VOC: val.txt is the test split
    vals = []
    for fold in range(2):
        cfg = SplitConfig(seed=0, val_fraction=0.15, test_fraction=0.2, folds=2, fold=fold)
        names = split.assign_listed(stems, subsets, cfg, seed=3)
        assert list(names[10:]) == ["test", "test"]
        vals.append({s for s, n in zip(stems, names, strict=True) if n == "val"})
    assert vals[0] | vals[1] == set(stems[:10]) and len(vals[0]) == len(vals[1]) == 5
    with pytest.raises(SegpipeError, match="split.folds: the image set lists' val.txt gives"):
        split.assign_listed(stems, {**subsets, "test": ["x"]}, cfg, seed=3)
