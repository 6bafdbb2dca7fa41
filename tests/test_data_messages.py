"""Data-side messages that must be correct and actionable: each hint, followed, works; each
case a message once got wrong is read, or refused with the setting that reads it."""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.config import load_params
from segpipe.constants import IGNORE
from segpipe.data import coco, split
from segpipe.data.images import PIXELS_ENV, open_image, read_image
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.errors import SegpipeError

from .annotations import CocoFile, save_photo
from .helpers import tiny_params, write_params
from .test_coco import SQUARE, H, W, coco_data, convert
from .test_masks import disc, jpeg, run_split, voc_masks, write_dataset

N = 8


def split_error(tmp_path: Path, raw: Path, **kwargs) -> str:
    with pytest.raises(SegpipeError) as caught:
        run_split(tmp_path, raw, **kwargs)
    return str(caught.value)


# --- mask-rule hints ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [256, 1000, 32768])
def test_16_bit_masks_of_one_value_are_not_told_an_impossible_colour(tmp_path, value):
    masks = {f"m{i}.png": (disc(i) * value).astype(np.uint16) for i in range(N)}
    message = split_error(tmp_path, write_dataset(tmp_path / "raw", masks))
    assert f"[{value}, {value}, {value}]" not in message
    assert f"{value} is beyond 8 bits (16-bit masks)" in message
    for i, mask in enumerate(masks.values()):  # the fix it names: 0/65535 is read
        Image.fromarray((mask > 0).astype(np.uint16) * 65535).save(
            tmp_path / "raw/masks" / f"m{i}.png"
        )
    assert load_rule(run_split(tmp_path, tmp_path / "raw", "ok") / RULE_FILE).rule == "0/255"


@pytest.mark.parametrize("quality", [100, 98, 95])
def test_jpeg_masks_of_high_quality_are_read(tmp_path, quality):
    masks = {f"j{i}.jpg": jpeg(disc(i).astype(np.uint8) * 255, quality) for i in range(N)}
    splits = run_split(tmp_path, write_dataset(tmp_path / "raw", masks))
    rule = load_rule(splits / RULE_FILE)
    assert rule.rule == "grey"
    labels = rule.read(tmp_path / "raw" / "masks" / "j3.jpg")
    assert (labels == disc(3)).mean() > 0.99


def test_a_middle_value_is_named_with_ignore_index_not_a_0_percent_share(tmp_path):
    masks = {}
    for i in range(N):  # 0/255 objects with a thin 128 ring: "unsure" pixels
        masks[f"r{i}.png"] = np.where(disc(i), 255, np.where(disc(i + 1), 128, 0)).astype(np.uint8)
    message = split_error(tmp_path, write_dataset(tmp_path / "raw", masks))
    assert "0%" not in message and "too many for noise" not in message
    assert "if 128 marks pixels to leave out, set data.ignore_index: 128" in message
    rule = load_rule(run_split(tmp_path, tmp_path / "raw", "ok", ignore_index=128) / RULE_FILE)
    assert (rule.read(tmp_path / "raw/masks/r2.png") == IGNORE).sum() == (
        masks["r2.png"] == 128
    ).sum()


def test_0_1_masks_with_a_border_value_are_told_ignore_index(tmp_path):
    masks = voc_masks()
    for i in range(0, N, 2):  # half the masks without any border
        masks[f"v{i}.png"] = disc(i).astype(np.uint8)
    message = split_error(tmp_path, write_dataset(tmp_path / "raw", masks))
    assert "set data.ignore_index: 255" in message and "make them all" not in message
    run_split(tmp_path, tmp_path / "raw", "ok", ignore_index=255)


def test_0_1_and_0_255_masks_are_still_told_to_agree(tmp_path):
    masks = {f"a{i}.png": disc(i).astype(np.uint8) * (1 if i % 2 else 255) for i in range(N)}
    message = split_error(tmp_path, write_dataset(tmp_path / "raw", masks))
    assert "make them all 0/1 or all 0/255" in message and "ignore_index" not in message


VOC_PALETTE = {0: (0, 0, 0), 15: (192, 128, 128), 255: (224, 224, 192)}


def voc_person_masks() -> dict[str, np.ndarray]:
    """Person-only VOC masks: index 15 inside a 255 border."""
    return {
        f"p{i}.png": np.where(disc(i), 15, np.where(disc(i + 1), 255, 0)).astype(np.uint8)
        for i in range(N)
    }


def save_voc_palette(masks: dict[str, np.ndarray], folder: Path) -> None:
    flat = [0] * 768
    for index, colour in VOC_PALETTE.items():
        flat[3 * index : 3 * index + 3] = colour
    for name, labels in masks.items():
        image = Image.fromarray(labels, mode="P")
        image.putpalette(flat)
        image.save(folder / name)


def test_person_only_voc_palette_masks_are_told_colours_that_work(tmp_path):
    masks = voc_person_masks()
    raw = write_dataset(tmp_path / "raw", masks)
    save_voc_palette(masks, raw / "masks")
    message = split_error(tmp_path, raw, ignore_index=255)
    assert "[15, 15, 15]" not in message
    assert (
        "set data.mask_colours: [[0, 0, 0], [192, 128, 128]] and data.ignore_colour: "
        "[224, 224, 192] (the palette's colours)" in message
    )
    colours = ((0, 0, 0), (192, 128, 128))
    splits = run_split(
        tmp_path, raw, "ok", ignore_index=255, mask_colours=colours, ignore_colour=(224, 224, 192)
    )
    labels = load_rule(splits / RULE_FILE).read(raw / "masks" / "p3.png")
    assert ((labels == 1) == disc(3)).all() and (
        (labels == IGNORE) == (masks["p3.png"] == 255)
    ).all()


def test_voc_rgb_colour_masks_leave_out_their_border_colour(tmp_path):
    masks = voc_person_masks()
    raw = write_dataset(tmp_path / "raw", masks)
    for name, labels in masks.items():  # saved as RGB colours, as an editor may
        rgb = np.zeros((*labels.shape, 3), np.uint8)
        for index, colour in VOC_PALETTE.items():
            rgb[labels == index] = colour
        Image.fromarray(rgb).save(raw / "masks" / name)
    colours = ((0, 0, 0), (192, 128, 128))
    message = split_error(tmp_path, raw, mask_colours=colours, ignore_index=255)
    assert "data.ignore_colour: [224, 224, 192]" in message
    splits = run_split(tmp_path, raw, "ok", mask_colours=colours, ignore_colour=(224, 224, 192))
    report = json.loads((splits / "report.json").read_text())
    assert report["ignored_pixels"] == sum(int((m == 255).sum()) for m in masks.values())
    assert (
        "colour [224, 224, 192] is left out (data.ignore_colour)"
        in report["mask_rule"]["description"]
    )


@pytest.mark.parametrize(
    ("edits", "said"),
    [
        ({"ignore_colour": [224, 224, 192]}, "set data.mask_colours too"),
        (
            {"mask_colours": [[0, 0, 0], [9, 9, 9]], "ignore_colour": [9, 9, 9]},
            "is the colour of class 'foreground'",
        ),
        ({"mask_colours": [[0, 0, 0], [9, 9, 9]], "ignore_colour": [1, 2]}, "expected [r, g, b]"),
        (
            {"mask_colours": [[0, 0, 0], [9, 9, 9]], "ignore_colour": [0, 0, 256]},
            "values in 0..255",
        ),
    ],
)
def test_data_ignore_colour_is_checked(tmp_path, edits, said):
    params = write_params(tmp_path / "params.yaml", **{f"data__{k}": v for k, v in edits.items()})
    with pytest.raises(SegpipeError, match=r"^data\.ignore_colour: ") as caught:
        load_params(params)
    assert said in str(caught.value)


# --- COCO -------------------------------------------------------------------------------------


def test_an_all_crowd_coco_export_is_told_about_crowds_not_0_255_masks(tmp_path, caplog):
    root = tmp_path / "export"
    export = CocoFile()
    cat = export.category(1, "cat")
    export.category(2, "dog")
    for i in range(N):
        save_photo(root / "images" / f"{i}.png", H, W, seed=i)
        export.annotate(export.image(f"{i}.png", H, W), cat, [SQUARE], iscrowd=1)
    export.write(root / "annotations.json")
    raw = convert(root)
    p = tiny_params()
    with caplog.at_level("WARNING"):
        split.run(p.split, p.split.seed, raw, tmp_path / "splits", 3, 255)
    text = caplog.text
    assert "every annotation of the COCO export is a crowd region" in text
    assert "set data.ignore_index: null" in text and "0/255" not in text


def test_two_json_files_in_a_kaggle_archive_are_named_as_the_archive_s(tmp_path):
    for name in ("train.json", "val.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(SegpipeError) as caught:
        coco.find_annotation_file(tmp_path, coco_data(tmp_path), "Kaggle dataset o/n/versions/2")
    message = str(caught.value)
    assert message.startswith(f"Kaggle dataset o/n/versions/2: {tmp_path} holds 2 JSON")
    assert "data.path" not in message and f"relative to the dataset's folder {tmp_path}" in message


# --- names and sizes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["café", "naïve_01", "Ångström", "résumé-été"])
def test_an_image_and_its_mask_named_in_two_unicode_forms_pair(tmp_path, name):
    masks = {f"m{i}.png": disc(i).astype(np.uint8) * 255 for i in range(N)}
    raw = write_dataset(tmp_path / "raw", masks)
    nfc, nfd = unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)
    assert nfc != nfd
    (raw / "images" / "m0.png").rename(raw / "images" / f"{nfc}.png")
    (raw / "masks" / "m0.png").rename(raw / "masks" / f"{nfd}.png")
    splits = run_split(tmp_path, raw)
    report = json.loads((splits / "report.json").read_text())
    assert report["valid_pairs"] == N and report["skipped"] == []


def big_png(path: Path, side: int) -> Path:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_a_huge_image_names_the_setting_that_allows_it(tmp_path, monkeypatch):
    path = big_png(tmp_path / "big.png", 300)  # 90,000 pixels
    monkeypatch.setenv(PIXELS_ENV, "10000")
    with pytest.raises(SegpipeError) as caught:
        open_image(path)
    assert str(caught.value) == (
        f"{path}: cannot read image (90,000 pixels, more than the 10,000 allowed against "
        f"decompression bombs; if the file is trusted, allow it: set {PIXELS_ENV}=90000 in "
        "the environment)"
    )
    monkeypatch.setenv(PIXELS_ENV, "90000")
    assert read_image(path).shape == (300, 300, 3)
    monkeypatch.setenv(PIXELS_ENV, "lots")
    with pytest.raises(SegpipeError, match=f"^{PIXELS_ENV}: expected a whole number of pixels"):
        open_image(path)
    monkeypatch.delenv(PIXELS_ENV)
    assert read_image(path).shape == (300, 300, 3)  # PIL's own limit again
    assert Image.MAX_IMAGE_PIXELS == 89478485
