"""Multi-class data end to end: synthetic shape classes, palette and class-index masks,
ignore_index, and train -> evaluate -> plot with per-class metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segpipe.constants import IGNORE
from segpipe.data import cache, download, split
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule
from segpipe.data.synthetic import make_pair
from segpipe.data.tables import read_split, read_table
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.reporting import plot
from segpipe.training import train

from .helpers import read_mask, tiny_params

CLASSES = ("background", "ellipse", "box", "triangle")


def multiclass_params(**data_overrides):
    p = tiny_params(loss="ce+dice", class_weights=(0.5, 1.0, 1.0, 1.0))
    data = dataclasses.replace(p.data, classes=CLASSES, **data_overrides)
    return dataclasses.replace(p, data=data)


def test_synthetic_multiclass_masks_hold_one_class_per_shape_kind():
    cfg = tiny_params().data.synthetic
    seen = set()
    for i in range(30):
        _, mask = make_pair(np.random.default_rng([0, i]), cfg, num_classes=4)
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3}
    # Two classes keep the 0/255 masks (and the same images) as before.
    image2, mask2 = make_pair(np.random.default_rng([0, 1]), cfg)
    assert set(np.unique(mask2).tolist()) <= {0, 255}
    with pytest.raises(SegpipeError, match="at most 4 shape classes"):
        make_pair(np.random.default_rng(0), cfg, num_classes=6)


def write_palette_dataset(root: Path, n: int = 12) -> Path:
    """Class-index palette PNG masks (0..2) with a 255 border, as VOC-style datasets have."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[5:20, 5:25] = 1
        mask[22:35, 20:45] = 2
        mask[4, :] = 255  # boundary pixels to ignore
        image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"p{i}.jpg")
        pal = Image.fromarray(mask, mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [255, 255, 255] * 253)
        pal.save(root / "masks" / f"p{i}.png")
    return root


def test_palette_masks_with_ignore_index(tmp_path):
    raw = write_palette_dataset(tmp_path / "raw")
    p = tiny_params()
    mask = read_mask(raw / "masks" / "p0.png", 3, ignore_index=255)
    assert set(np.unique(mask).tolist()) == {0, 1, 2, IGNORE}
    counts = split.run(p.split, p.split.seed, raw, tmp_path / "s", num_classes=3, ignore_index=255)
    assert sum(counts.values()) == 12
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["ignored_pixels"] == 12 * 48
    assert report["class_pixels"]["1"] == 12 * 15 * 20
    # Without ignore_index, 255 fits no class: one clear error naming the file and the fix.
    with pytest.raises(SegpipeError) as err:
        split.run(p.split, p.split.seed, raw, tmp_path / "s2", num_classes=3)
    message = str(err.value)
    assert "masks/p0.png: mask values [255] fit none of the 3 classes" in message
    assert "set data.ignore_index to it" in message and "\n" not in message


def test_binary_masks_with_an_ignore_value(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1, 255, 1]], dtype=np.uint8)).save(path)
    assert read_mask(path, 2, ignore_index=255).tolist() == [[0, 1, IGNORE, 1]]
    # Without it, 0/1 with a 255 border fits no two-class rule (before, the mask was read as
    # 0/255 and its object became background): the error names the fix.
    with pytest.raises(SegpipeError, match="set data.ignore_index: 255"):
        read_mask(path, 2)


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    p = multiclass_params()
    download.run(p.data, p.seed, root / "raw")
    split.run(p.split, p.split.seed, root / "raw", root / "splits", p.data.num_classes)
    rule = load_rule(root / "splits" / RULE_FILE, p.data)
    cache.run(root / "splits", root / "cache", Geometry.from_train(p.train), rule)
    best = train.run(p, root / "cache", root / "model.pt", root / "live")
    result = evaluate.run(
        p,
        root / "model.pt",
        root / "splits",
        root / "eval.json",
        root / "per_image.csv",
        root / "pred",
        root / "card.md",
        root / "sweep.csv",
        root / "confusion.csv",
    )
    return root, p, best, result


def test_multiclass_train_evaluate_plot(multiclass_run):
    root, p, best, result = multiclass_run
    assert 0.0 <= best["dice"] <= 1.0
    written = json.loads((root / "eval.json").read_text())
    for name in ("dice", "iou", "precision", "recall"):
        for c in CLASSES:
            key = f"{name}/{c}"
            assert key in written and (written[key] is None or 0 <= written[key] <= 1)
        fg = [written[f"{name}/{c}"] for c in CLASSES[1:] if written[f"{name}/{c}"] is not None]
        assert written[name] == pytest.approx(np.mean(fg))  # the mean over foreground classes
    assert "val_best_threshold" not in written  # argmax: no threshold to choose
    # Boundary metrics per foreground class; their means over the classes that have one.
    for name in ("hd95", "nsd"):
        assert f"{name}/background" not in written
        scored = [written[f"{name}/{c}"] for c in CLASSES[1:] if written[f"{name}/{c}"] is not None]
        assert written[name] == (pytest.approx(np.mean(scored)) if scored else None)
    per_image = read_table(root / "per_image.csv", ("stem",), "scores", "").set_index("stem")
    assert {f"nsd/{c}" for c in CLASSES[1:]} <= set(per_image.columns)
    nsd = per_image[[f"nsd/{c}" for c in CLASSES[1:]]]
    assert nsd.stack().dropna().between(0, 1).all() and nsd.notna().any().any()
    for _, row in read_split(root / "splits" / "test.csv").iterrows():
        pred = Image.open(root / "pred" / f"{row['stem']}.png")
        assert pred.mode == "P" and pred.size == (row["width"], row["height"])
        labels = np.asarray(pred)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
        truth = read_mask(Path(row["mask"]), len(CLASSES))
        for k, name in enumerate(CLASSES[1:], start=1):  # undefined only with the class in neither
            absent = not (labels == k).any() and not (truth == k).any()
            assert np.isnan(nsd.loc[row["stem"], f"nsd/{name}"]) == absent
    confusion = pd.read_csv(root / "confusion.csv")
    assert set(confusion["actual"]) <= set(CLASSES) and len(confusion) % 1000 == 0
    card = (root / "card.md").read_text()
    assert "| triangle |" in card and "Confusion matrix" in card
    assert pd.read_csv(root / "sweep.csv")["recall"].is_monotonic_decreasing

    plot.run(
        p.plot,
        root / "splits" / "test.csv",
        root / "per_image.csv",
        root / "pred",
        root / "live",
        root / "plots",
        load_rule(root / "splits" / RULE_FILE, p.data),
    )
    for name in ("predictions.png", "worst.png", "dice_histogram.png", "training_curves.png"):
        assert Image.open(root / "plots" / name).size[0] > 300


def test_include_background_changes_only_the_means(multiclass_run, tmp_path):
    root, p, _, without = multiclass_run
    p_bg = dataclasses.replace(p, evaluate=dataclasses.replace(p.evaluate, include_background=True))
    with_bg = evaluate.run(
        p_bg,
        root / "model.pt",
        root / "splits",
        tmp_path / "e.json",
        tmp_path / "pi.csv",
        tmp_path / "pred",
    )
    assert with_bg["iou/box"] == without["iou/box"]
    assert with_bg["iou"] == pytest.approx(
        np.mean([with_bg[f"iou/{c}"] for c in CLASSES if with_bg[f"iou/{c}"] is not None])
    )


def test_worst_gallery_orders_by_dice(multiclass_run, tmp_path):
    root, p, _, _ = multiclass_run
    rule = MaskRule("indices", 4)
    stems = plot.worst_gallery(root / "per_image.csv", root / "pred", 3, tmp_path / "w.png", rule)
    frame = read_table(root / "per_image.csv", ("stem",), "per-image scores", "").sort_values(
        ["dice", "stem"]
    )
    assert stems == frame["stem"].head(3).tolist()


def test_error_overlay_colours():
    image = np.zeros((1, 4, 3), dtype=np.uint8)
    truth = np.array([[1, 1, 0, 2]])
    pred = np.array([[1, 0, 2, 1]])
    out = plot.error_overlay(image, truth, pred, alpha=1.0)
    assert out[0, 0].tolist() == list(plot.ERROR_COLOURS["TP"])
    assert out[0, 1].tolist() == list(plot.ERROR_COLOURS["FN"])
    assert out[0, 2].tolist() == list(plot.ERROR_COLOURS["FP"])
    assert out[0, 3].tolist() == list(plot.ERROR_COLOURS["FP"])  # wrong foreground class


def test_predict_reproduces_multiclass_predictions(multiclass_run, tmp_path):
    from segpipe.commands import predict

    root, _, _, _ = multiclass_run
    test = read_split(root / "splits" / "test.csv")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for image in test["image"]:
        (inputs / Path(image).name).symlink_to(image)
    predict.run(root / "model.pt", inputs, tmp_path / "out", with_overlay=True)
    for stem in test["stem"]:
        ours = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert np.array_equal(ours, np.asarray(Image.open(root / "pred" / f"{stem}.png")))
        assert (tmp_path / "out" / f"{stem}_overlay.png").exists()


def test_a_model_for_other_classes_is_refused(multiclass_run, tmp_path):
    root, _, _, _ = multiclass_run
    with pytest.raises(SegpipeError) as err:
        evaluate.run(
            tiny_params(),
            root / "model.pt",
            root / "splits",
            tmp_path / "e.json",
            tmp_path / "pi.csv",
            tmp_path / "pred",
        )
    assert "model.pt: trained for classes ['background', 'ellipse', 'box', 'triangle']" in str(
        err.value
    )
    assert "retrain it (dvc repro)" in str(err.value) and not (tmp_path / "e.json").exists()


def test_ignoring_the_foreground_value_warns(tmp_path, raw_dir, caplog):
    p = tiny_params()  # raw_dir holds 0/255 masks: ignore_index 255 leaves no foreground
    split.run(p.split, p.split.seed, raw_dir, tmp_path / "s", num_classes=2, ignore_index=255)
    assert "no mask has a foreground pixel (data.ignore_index 255 leaves out" in caplog.text
