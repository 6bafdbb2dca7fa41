"""One mask rule per dataset: decided by the split stage from all masks, stated in its report,
written to ``mask_rule.json`` and applied by every later reader (cache, evaluate, plot, the
Dataset). Before, each file was read by a rule of its own."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segpipe.constants import IGNORE
from segpipe.data import cache, split
from segpipe.data.dataset import SegmentationDataset, build_transform
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule, rule_of_files
from segpipe.data.tables import read_split, read_table
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.reporting import plot
from segpipe.training import train

from .helpers import tiny_params

SIZE = 32
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def disc(i: int, size: int = SIZE) -> np.ndarray:
    """A boolean disc, a little larger for each ``i``."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - size / 2) ** 2 + (xx - size / 2 + 2) ** 2 <= (size * (0.15 + 0.02 * i)) ** 2


def jpeg(values: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_dataset(root: Path, masks: dict[str, np.ndarray | bytes]) -> Path:
    """Random photos and the given masks: arrays are saved as PNG, bytes as they are."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask in masks.items():
        stem = Path(name).stem
        size = Image.open(io.BytesIO(mask)).size[::-1] if isinstance(mask, bytes) else mask.shape
        size = size[:2]
        photo = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(photo).save(root / "images" / f"{stem}.png")
        if isinstance(mask, bytes):
            (root / "masks" / name).write_bytes(mask)
        else:
            Image.fromarray(mask).save(root / "masks" / name)
    return root


def run_split(tmp_path: Path, raw: Path, out: str = "splits", **kwargs) -> Path:
    p = tiny_params()
    split.run(p.split, p.split.seed, raw, tmp_path / out, **kwargs)
    return tmp_path / out


def rows(splits: Path) -> pd.DataFrame:
    return pd.concat([read_split(splits / f"{name}.csv") for name in split.SPLITS])


def cached_masks(splits: Path, out: Path) -> dict[str, np.ndarray]:
    """The cache stage's mask arrays by stem, built with the split stage's rule (for every
    split, the test split too, so that every mask is checked)."""
    cache.run(splits, out, Geometry.squash(32), load_rule(splits / RULE_FILE), splits=split.SPLITS)
    found = {}
    for name in split.SPLITS:
        masks = np.load(cache.cache_paths(out, name)[1])
        found.update(zip(read_split(splits / f"{name}.csv")["stem"], masks, strict=True))
    return found


# --- colour masks ------------------------------------------------------------------------------


def colour_masks(colour: tuple[int, int, int], n: int = 8) -> dict[str, np.ndarray]:
    masks = {}
    for i in range(n):
        rgb = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        rgb[disc(i)] = colour
        masks[f"c{i}.png"] = rgb
    return masks


@pytest.mark.parametrize("colour", [RED, BLUE], ids=["red", "blue"])
def test_colour_masks_need_their_colours_declared(tmp_path, colour):
    raw = write_dataset(tmp_path / "raw", colour_masks(colour))
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw)
    message = str(err.value)
    assert message.startswith(f"{raw / 'masks'}: 8 of 8 masks are colour images (e.g. ")
    listed = f"[{colour[0]}, {colour[1]}, {colour[2]}]"
    assert "; colours by pixels: [0, 0, 0] " in message and f"%, {listed} " in message
    assert message.endswith(
        "set data.mask_colours to one [r, g, b] per class of data.classes, in class order, "
        f"e.g. [[0, 0, 0], {listed}]"
    )
    assert not (tmp_path / "splits").exists()

    splits = run_split(tmp_path, raw, mask_colours=((0, 0, 0), colour))
    report = json.loads((splits / "report.json").read_text())
    assert report["mask_rule"]["rule"] == "colours"
    assert report["mask_values"] == {
        "[0, 0, 0]": report["class_pixels"]["0"],
        listed: report["class_pixels"]["1"],
    }
    objects = {f"c{i}": disc(i) for i in range(8)}
    assert report["class_pixels"]["1"] == sum(d.sum() for d in objects.values())
    for _, row in rows(splits).iterrows():
        assert row["fg_fraction"] == pytest.approx(objects[row["stem"]].mean(), abs=1e-6)
    rule = load_rule(splits / RULE_FILE)
    assert (rule.read(raw / "masks" / "c3.png") == objects["c3"]).all()
    for stem, mask in cached_masks(splits, tmp_path / "cache").items():
        assert set(np.unique(mask)) == {0, 1}, stem  # before: red or blue read as empty


def test_a_colour_not_declared_names_the_file_and_colour(tmp_path):
    masks = colour_masks(RED)
    masks["c5.png"][:2, :3] = GREEN
    masks["c5.png"][2, 0] = BLUE
    raw = write_dataset(tmp_path / "raw", masks)
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw, mask_colours=((0, 0, 0), RED))
    assert str(err.value) == (
        f"{raw / 'masks' / 'c5.png'}: colours [0, 255, 0] (6 px), [0, 0, 255] (1 px) are not in "
        "data.mask_colours ([0, 0, 0], [255, 0, 0]); add each with its class to data.classes, "
        "or fix the mask"
    )


def test_declared_colours_read_palette_and_grey_masks_and_ignore(tmp_path):
    grey = np.where(disc(1), 255, 0).astype(np.uint8)
    grey[0] = 128  # the grey colour [128, 128, 128]: left out by ignore_index 128
    palette = Image.fromarray(disc(2).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.save(tmp_path / "p.png")
    Image.fromarray(grey).save(tmp_path / "g.png")
    rule = rule_of_files(
        [tmp_path / "p.png", tmp_path / "g.png"], 2, 128, ((0, 0, 0), (255, 255, 255))
    )
    assert (rule.read(tmp_path / "p.png") == disc(2)).all()
    expected = disc(1).astype(np.uint8)
    expected[0] = IGNORE
    assert (rule.read(tmp_path / "g.png") == expected).all()
    assert rule.describe() == (
        "colour masks (data.mask_colours): [0, 0, 0] is class 0, [255, 255, 255] is class 1; "
        "colour [128, 128, 128] is left out (data.ignore_index)"
    )


# --- grey and class-index masks ----------------------------------------------------------------


def voc_masks(n: int = 8) -> dict[str, np.ndarray]:
    """0/1 masks whose objects have a 255 border, as Pascal VOC draws them."""
    masks = {}
    for i in range(n):
        inner, outer = disc(i), disc(i + 1)
        masks[f"v{i}.png"] = np.where(inner, 1, np.where(outer, 255, 0)).astype(np.uint8)
    return masks


def test_voc_borders_need_ignore_index(tmp_path):
    masks = voc_masks()
    raw = write_dataset(tmp_path / "raw", masks)
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw)
    assert str(err.value) == (
        f"{raw / 'masks'}: mask values 0 (8 files), 1 (8 files), 255 (8 files) fit no two-class "
        "rule (0/1, 0/255, or grey levels near 0 and 255 as in JPEG masks); if 255 marks "
        "borders or unlabelled pixels, set data.ignore_index: 255"
    )
    splits = run_split(tmp_path, raw, ignore_index=255)
    report = json.loads((splits / "report.json").read_text())
    assert report["mask_rule"]["rule"] == "0/1"
    objects = sum(int((m == 1).sum()) for m in masks.values())
    assert report["class_pixels"]["1"] == objects  # before: 0 object pixels kept
    assert report["ignored_pixels"] == sum(int((m == 255).sum()) for m in masks.values())
    rule = load_rule(splits / RULE_FILE)
    labels = rule.read(raw / "masks" / "v4.png")
    assert ((labels == 1) == (masks["v4.png"] == 1)).all()
    assert ((labels == IGNORE) == (masks["v4.png"] == 255)).all()


def test_a_stray_value_stops_the_split(tmp_path):
    masks = {f"b{i}.png": disc(i).astype(np.uint8) for i in range(8)}
    masks["b3.png"][0, 0] = 2
    raw = write_dataset(tmp_path / "raw", masks)
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw)
    assert str(err.value) == (
        f"{raw / 'masks'}: mask values 0 (8 files), 1 (8 files), 2 (1 file: "
        f"{(raw / 'masks' / 'b3.png').as_posix()}) fit no two-class rule (0/1, 0/255, or grey "
        "levels near 0 and 255 as in JPEG masks); for class-index masks, list 3 classes in "
        "data.classes (background first)"
    )


def test_class_index_masks_under_two_classes_name_data_classes(tmp_path):
    masks = {}
    for i in range(8):
        masks[f"k{i}.png"] = disc(i).astype(np.uint8)
        if i % 3 == 0:
            masks[f"k{i}.png"][:4] = 2
    raw = write_dataset(tmp_path / "raw", masks)
    with pytest.raises(SegpipeError, match=r"2 \(3 files\) fit no two-class rule .* list 3 "):
        run_split(tmp_path, raw)
    splits = run_split(tmp_path, raw, num_classes=3)  # as the message says
    assert json.loads((splits / "report.json").read_text())["mask_rule"]["rule"] == "indices"


def test_a_grey_level_that_is_no_convention_stops_the_split(tmp_path):
    raw = write_dataset(tmp_path / "raw", {f"g{i}.png": disc(i) * np.uint8(76) for i in range(8)})
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw)
    assert str(err.value).endswith(
        "if 76 marks the foreground, set data.mask_colours: [[0, 0, 0], [76, 76, 76]]"
    )


# --- JPEG masks --------------------------------------------------------------------------------


JPEG_SIZE = 64


def near_empty_jpeg() -> bytes:
    """A JPEG mask whose only values happen to be 0 and 1 (a faint smudge)."""
    faint = np.zeros((JPEG_SIZE, JPEG_SIZE), dtype=np.uint8)
    faint[30:32, 30:32] = 4
    data = jpeg(faint)
    assert set(np.unique(np.asarray(Image.open(io.BytesIO(data))))) == {0, 1}
    return data


def jpeg_masks() -> dict[str, bytes]:
    masks = {f"j{i}.jpg": jpeg(disc(i, JPEG_SIZE).astype(np.uint8) * 255) for i in range(7)}
    masks["empty.jpg"] = near_empty_jpeg()
    return masks


def test_noisy_jpeg_masks_are_all_read_with_one_rule(tmp_path):
    masks = jpeg_masks()
    raw = write_dataset(tmp_path / "raw", masks)
    splits = run_split(tmp_path, raw)
    report = json.loads((splits / "report.json").read_text())
    assert len(report["mask_values"]) > 8
    assert report["mask_rule"]["rule"] == "grey"
    for _, row in rows(splits).iterrows():
        values = np.asarray(Image.open(row["mask"]))
        assert row["fg_fraction"] == pytest.approx((values >= 128).mean(), abs=1e-6)
    fg = rows(splits).set_index("stem")["fg_fraction"]
    assert fg["empty"] == 0  # before: its 1s were foreground
    assert fg.drop("empty").min() > 0.05
    markdown = (splits / "report.md").read_text()
    assert (
        "- Mask rule, the same for every mask: grey levels clustered at 0 and 255, as in "
        "JPEG-compressed 0/255 masks: values >= 128 are foreground." in markdown
    )
    # Every later reader applies the same rule: the cache and the Dataset.
    cached = cached_masks(splits, tmp_path / "cache")
    assert not cached["empty"].any()
    assert all(cached[f"j{i}"].any() for i in range(7))
    rule = load_rule(splits / RULE_FILE)
    frame = rows(splits)
    direct = SegmentationDataset(
        frame, build_transform(32, augment=False, seed=0), rule
    )  # as cached
    for i, stem in enumerate(frame["stem"]):
        assert (direct[i][1].numpy() == cached[stem]).all(), stem


def test_masks_that_disagree_stop_the_split(tmp_path):
    clean = {f"m{i}.png": disc(i).astype(np.uint8) * (1 if i < 3 else 255) for i in range(8)}
    raw = write_dataset(tmp_path / "a", clean)
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw)
    assert str(err.value) == (
        f"{raw / 'masks'}: the masks disagree: 3 masks hold only 0 and 1 (e.g. "
        f"{(raw / 'masks' / 'm0.png').as_posix()}), 5 hold values up to 255 (e.g. "
        f"{(raw / 'masks' / 'm3.png').as_posix()}); one rule reads every mask: make them all 0/1 "
        "or all 0/255"
    )
    noisy = {**jpeg_masks(), "ones.png": disc(3).astype(np.uint8)}
    raw = write_dataset(tmp_path / "b", noisy)
    with pytest.raises(SegpipeError) as err:
        run_split(tmp_path, raw)
    assert str(err.value) == (
        f"{raw / 'masks'}: the masks disagree: 1 mask holds only 0 and 1 (e.g. "
        f"{(raw / 'masks' / 'ones.png').as_posix()}, {disc(3).mean():.0%} ones), the others "
        "grey levels near 0 and 255, read as values >= 128 are foreground, which would leave the "
        "0/1 masks empty; one rule reads every mask: make them all 0/255"
    )
    assert not (tmp_path / "splits").exists()


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ({0: 10, 1: 5}, "0/1"),
        ({0: 10}, "0/1"),
        ({0: 10, 255: 5}, "0/255"),
        ({0: 10, 65535: 5}, "0/255"),
        (dict.fromkeys([0, 1, 2, 3, 250, 252, 254, 255], 5), "grey"),
        (dict.fromkeys([*range(21), 255], 5), None),  # VOC: 21 classes and a 255 border
        (dict.fromkeys(range(151), 5), None),  # ADE20K-like class indices
        ({0: 50, 128: 10, 255: 40, **dict.fromkeys(range(1, 6), 1)}, None),  # a trimap
        (dict.fromkeys(range(256), 5), None),  # soft masks
    ],
)
def test_two_class_rules_from_values(tmp_path, values, rule):
    pixels = np.repeat(np.array(list(values), dtype=np.uint16), list(values.values()))
    dtype = np.uint8 if pixels.max() < 256 else np.uint16
    Image.fromarray(pixels.astype(dtype)[None]).save(tmp_path / "m.png")
    if rule is None:
        with pytest.raises(SegpipeError, match="fit no two-class rule"):
            rule_of_files([tmp_path / "m.png"], 2)
    else:
        assert rule_of_files([tmp_path / "m.png"], 2).rule == rule


# --- the rule in the report and in every later stage -------------------------------------------


def test_the_report_and_mask_rule_json_state_the_rule(tmp_path, raw_dir, params):
    splits = run_split(tmp_path, raw_dir)
    report = json.loads((splits / "report.json").read_text())
    written = json.loads((splits / RULE_FILE).read_text())
    assert (
        report["mask_rule"]
        == written
        == {
            "rule": "0/255",
            "num_classes": 2,
            "ignore_index": None,
            "colours": None,
            "ignore_colour": None,
            "description": "0/255 masks: 255 is foreground",
        }
    )
    markdown = (splits / "report.md").read_text()
    assert "- Mask rule, the same for every mask: 0/255 masks: 255 is foreground.\n" in markdown
    assert load_rule(splits / RULE_FILE, params.data) == MaskRule("0/255", 2)


def test_a_stale_or_missing_rule_is_refused(tmp_path, splits_dir, params):
    data = dataclasses.replace(params.data, ignore_index=255)
    with pytest.raises(SegpipeError) as err:
        load_rule(splits_dir / RULE_FILE, data)
    assert str(err.value) == (
        f"{splits_dir / RULE_FILE}: decided with data.ignore_index null, but params.yaml has "
        "255; rerun the split stage (dvc repro)"
    )
    with pytest.raises(SegpipeError, match="decided with data.mask_colours null, but params"):
        load_rule(
            splits_dir / RULE_FILE,
            dataclasses.replace(params.data, mask_colours=((0, 0, 0), (9, 9, 9))),
        )
    with pytest.raises(SegpipeError, match="mask rule not found \\(run the split stage first\\)"):
        load_rule(tmp_path / RULE_FILE)
    Image.new("RGB", (4, 4), RED).save(tmp_path / "red.png")  # a colour mask since the split
    with pytest.raises(SegpipeError, match="red.png: a colour mask, but the split stage read"):
        MaskRule("0/255", 2).read(tmp_path / "red.png")
    (tmp_path / RULE_FILE).write_text('{"rule": "guess"}')
    with pytest.raises(SegpipeError, match="not a mask rule written by the split stage"):
        load_rule(tmp_path / RULE_FILE)


def test_evaluate_and_plot_read_masks_by_the_split_rule(tmp_path, monkeypatch):
    """Train briefly on JPEG masks with a near-empty {0, 1} one; evaluate and plot read every
    mask, that one included, by the split stage's >= 128 rule."""
    raw = write_dataset(tmp_path / "raw", jpeg_masks())
    splits = run_split(tmp_path, raw)
    everything = rows(splits)
    for name in ("test", "val"):  # score every image, the near-empty one included
        everything.to_csv(splits / f"{name}.csv", index=False)
    p = tiny_params()
    p = dataclasses.replace(p, train=dataclasses.replace(p.train, image_size=32))
    rule = load_rule(splits / RULE_FILE, p.data)
    cache.run(splits, tmp_path / "cache", Geometry.squash(32), rule)
    train.run(p, tmp_path / "cache", tmp_path / "model.pt", tmp_path / "live")
    evaluate.run(
        p, tmp_path / "model.pt", splits, tmp_path / "e.json", tmp_path / "pi.csv", tmp_path / "pr"
    )
    scores = read_table(tmp_path / "pi.csv", ("stem",), "per-image scores", "")
    truth = scores.set_index("stem")["true_fg_fraction"]
    expected = everything.set_index("stem")["fg_fraction"]
    assert truth.to_dict() == pytest.approx(expected.to_dict(), abs=1e-6)
    assert truth["empty"] == 0

    drawn: list[np.ndarray] = []
    monkeypatch.setattr(plot, "colourize", lambda labels, n: drawn.append(labels) or labels)
    monkeypatch.setattr(plot, "_save", lambda fig, path: None)
    plot.prediction_grid(splits / "test.csv", tmp_path / "pr", 8, tmp_path / "g.png", rule)
    truths = drawn[1::2]  # prediction, ground truth per row
    for stem, labels in zip(everything["stem"], truths, strict=True):
        assert (labels == rule.read(raw / "masks" / f"{stem}.jpg")).all()
    assert not truths[list(everything["stem"]).index("empty")].any()
