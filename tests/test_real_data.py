"""Real data as users bring it: names that look like numbers, EXIF-rotated phone photos,
WebP/GIF/CMYK/16-bit files, mask suffixes, subfolders and stray files."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segpipe.config import load_params
from segpipe.data import cache, download, split
from segpipe.data.geometry import Geometry
from segpipe.data.images import open_image, read_image, scan_folder
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule, read_pair
from segpipe.data.tables import read_split, read_table
from segpipe.errors import SegpipeError
from segpipe.reporting import plot

from .helpers import REPO, read_mask, tiny_params, write_params
from .realdata import (
    AWKWARD_STEMS,
    photo_and_mask,
    save_rotated_photo,
    write_folder_dataset,
)
from .realdata import dice as mask_dice


def split_stems(splits_dir) -> dict[str, list[str]]:
    return {name: read_split(splits_dir / f"{name}.csv")["stem"].tolist() for name in split.SPLITS}


# --- names are text ---------------------------------------------------------------------------


def test_awkward_names_survive_download_and_split(tmp_path, params):
    stems = [*AWKWARD_STEMS, "0001", "0002"]
    write_folder_dataset(tmp_path / "ext", stems)
    data = dataclasses.replace(params.data, source="folder", path=str(tmp_path / "ext"))
    download.run(data, params.seed, tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw" / "images").iterdir()) == sorted(
        f"{s}.jpg" for s in stems
    )
    split.run(params.split, params.seed, tmp_path / "raw", tmp_path / "splits")
    found = split_stems(tmp_path / "splits")
    assert sorted(s for part in found.values() for s in part) == sorted(stems)
    for name in split.SPLITS:
        frame = read_split(tmp_path / "splits" / f"{name}.csv")
        for stem, image in zip(frame["stem"], frame["image"], strict=True):
            assert image.endswith(f"/images/{stem}.jpg")
    report = json.loads((tmp_path / "splits" / "report.json").read_text())
    assert report["valid_pairs"] == len(stems) and report["skipped_count"] == 0


def test_read_table_keeps_names_and_numbers(tmp_path):
    stems = list(AWKWARD_STEMS)
    frame = pd.DataFrame(
        {
            "stem": stems,
            "image": [f"images/{s}.jpg" for s in stems],
            "mask": [f"masks/{s}.png" for s in stems],
            "dice": [0.5] * (len(stems) - 1) + [float("nan")],
        }
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    back = read_table(tmp_path / "t.csv", ("stem",), "table", "write it")
    assert back["stem"].tolist() == stems
    assert back["image"].tolist() == [f"images/{s}.jpg" for s in stems]
    assert back["dice"].dtype == float and np.isnan(back["dice"].iloc[-1])
    with pytest.raises(SegpipeError, match=r"gone.csv: table not found \(write it\)"):
        read_table(tmp_path / "gone.csv", (), "table", "write it")
    with pytest.raises(SegpipeError, match=r"missing column\(s\) \['width'\]"):
        read_table(tmp_path / "t.csv", ("stem", "width"), "table", "write it")


def test_plot_titles_and_log_keep_names(tmp_path, monkeypatch, caplog):
    """The grid and the gallery title each image with its exact stem."""
    stems = ["0003", "NA", "1e5"]
    write_folder_dataset(tmp_path / "raw", stems)
    preds = tmp_path / "pred"
    shutil.copytree(tmp_path / "raw" / "masks", preds)  # perfect predictions
    rows = [
        {
            "stem": s,
            "image": (tmp_path / "raw" / "images" / f"{s}.jpg").as_posix(),
            "mask": (tmp_path / "raw" / "masks" / f"{s}.png").as_posix(),
            "dice": d,
        }
        for s, d in zip(stems, (0.9, 0.1, 0.5), strict=True)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "per_image.csv", index=False)
    titles: list[str] = []

    def keep_titles(fig, path):
        titles.extend(ax.get_title() for ax in fig.axes)

    monkeypatch.setattr(plot, "_save", keep_titles)
    rule = MaskRule("0/255", 2)
    plot.prediction_grid(tmp_path / "test.csv", preds, 3, tmp_path / "grid.png", rule)
    assert [t for t in titles if ":" in t] == ["image: 0003", "image: NA", "image: 1e5"]
    titles.clear()
    worst = plot.worst_gallery(tmp_path / "per_image.csv", preds, 3, tmp_path / "worst.png", rule)
    assert worst == ["NA", "1e5", "0003"]
    assert [t for t in titles if "Dice" in t] == [
        "NA: Dice 0.100",
        "1e5: Dice 0.500",
        "0003: Dice 0.900",
    ]


# --- photos in the orientation people see them --------------------------------------------------


def test_exif_rotated_photo_is_read_upright(tmp_path):
    photo, mask = photo_and_mask(48, 64, seed=0)
    save_rotated_photo(photo, tmp_path / "phone.jpg")
    stored = open_image(tmp_path / "phone.jpg", upright=False)
    assert stored.size == (48, 64)  # stored sideways: 48 wide, 64 high
    shown = read_image(tmp_path / "phone.jpg")
    assert shown.shape == (48, 64, 3)
    Image.fromarray(mask).save(tmp_path / "phone.png")
    image, labels = read_pair(tmp_path / "phone.jpg", tmp_path / "phone.png", MaskRule("0/255", 2))
    red = (image[..., 0] > 180) & (image[..., 1] < 90)
    assert mask_dice(red, labels) > 0.9


def test_split_counts_turned_photos_and_cache_aligns_them(tmp_path, params):
    stems = [f"{i:04d}" for i in range(10)]
    write_folder_dataset(tmp_path / "raw", stems, rotated=("0003", "0004"))
    split.run(params.split, params.seed, tmp_path / "raw", tmp_path / "splits")
    report = json.loads((tmp_path / "splits" / "report.json").read_text())
    assert report["exif_turned_images"] == 2 and report["skipped_count"] == 0
    assert (
        "turned upright by their EXIF orientation tag: 2"
        in (tmp_path / "splits" / "report.md").read_text()
    )
    rule = load_rule(tmp_path / "splits" / RULE_FILE)
    cache.run(
        tmp_path / "splits", tmp_path / "cache", Geometry.squash(64), rule, splits=split.SPLITS
    )
    for name in split.SPLITS:  # every photo, the test split's too
        frame = read_split(tmp_path / "splits" / f"{name}.csv")
        images = np.load(tmp_path / "cache" / f"{name}_images.npy")
        masks = np.load(tmp_path / "cache" / f"{name}_masks.npy")
        for image, mask in zip(images, masks, strict=True):
            red = (image[..., 0] > 180) & (image[..., 1] < 90)
            assert mask_dice(red, mask) > 0.9, frame["stem"].tolist()


def test_mask_drawn_on_the_stored_pixels_is_skipped_with_a_hint(tmp_path, params, caplog):
    write_folder_dataset(tmp_path / "raw", [f"{i}" for i in range(8)], rotated=("5",))
    stored = np.rot90(np.asarray(Image.open(tmp_path / "raw" / "masks" / "5.png")), k=1)
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "raw" / "masks" / "5.png")
    split.run(params.split, params.seed, tmp_path / "raw", tmp_path / "splits")
    report = json.loads((tmp_path / "splits" / "report.json").read_text())
    (skipped,) = report["skipped"]
    assert skipped["kind"] == "size_mismatch"
    assert "turned by its EXIF orientation" in skipped["reason"]


# --- formats users have ----------------------------------------------------------------------


def _write(image: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_image_formats_become_rgb(tmp_path):
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[:, :4] = (200, 40, 10)
    webp = _write(Image.fromarray(rgb), tmp_path / "a.WEBP", lossless=True)
    assert (read_image(webp) == rgb).all()
    upper = _write(Image.fromarray(rgb), tmp_path / "b.PNG")
    assert (read_image(upper) == rgb).all()
    cmyk = _write(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100)
    assert np.abs(read_image(cmyk).astype(int) - (255, 0, 0)).max() <= 3
    adaptive = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    palette = _write(adaptive, tmp_path / "d.gif")
    assert (read_image(palette) == rgb).all()
    twelve_bit = (np.arange(48).reshape(6, 8) * 85).astype(np.uint16)  # 0..3995 of 4095
    sixteen = _write(Image.fromarray(twelve_bit), tmp_path / "e.png")
    assert open_image(sixteen).mode.startswith("I")
    grey = read_image(sixteen)
    assert grey.shape == (6, 8, 3) and grey[0, 0, 0] == 0 and grey[-1, -1, 0] == 255
    assert len(np.unique(grey)) == 48  # scaled by the range, not clipped at 255
    tiff = _write(Image.fromarray(twelve_bit), tmp_path / "f.TIF")
    assert (read_image(tiff) == grey).all()
    offset = _write(Image.fromarray(twelve_bit + 1000), tmp_path / "g.png")  # 1000..4995
    assert (read_image(offset) == grey).all()  # its own range, not 0..max


def test_mask_formats(tmp_path):
    carvana = np.zeros((6, 8), dtype=np.uint8)
    carvana[2:5, 1:6] = 1
    gif = Image.fromarray(carvana, "L").convert("P")
    _write(gif, tmp_path / "car_mask.gif")
    assert (read_mask(tmp_path / "car_mask.gif", 2) == carvana).all()
    wide = (carvana.astype(np.uint16) * 65535).astype(np.uint16)
    _write(Image.fromarray(wide), tmp_path / "wide.png")
    assert (read_mask(tmp_path / "wide.png", 2) == carvana).all()
    classes = (carvana * 2).astype(np.uint16)
    _write(Image.fromarray(classes), tmp_path / "classes.png")
    assert (read_mask(tmp_path / "classes.png", 3) == carvana * 2).all()


def test_formats_pair_and_split(tmp_path, params):
    """WebP and upper-case photos with GIF and 16-bit masks go through the split stage."""
    raw = tmp_path / "raw"
    for i, (ext, kwargs) in enumerate(
        [(".webp", {"lossless": True}), (".JPG", {"quality": 95}), (".PNG", {}), (".tiff", {})] * 2
    ):
        photo, mask = photo_and_mask(40, 48, seed=i)
        _write(Image.fromarray(photo), raw / "images" / f"{i:03d}{ext}", **kwargs)
        if i % 2:
            _write(
                Image.fromarray((mask > 0).astype(np.uint8), "L").convert("P"),
                raw / "masks" / f"{i:03d}.gif",
            )
        else:
            # 16-bit 0/1, as the GIFs: one rule reads all masks, so they must agree
            indices = (mask > 0).astype(np.uint16)
            _write(Image.fromarray(indices), raw / "masks" / f"{i:03d}.png")
    split.run(params.split, params.seed, raw, tmp_path / "splits")
    report = json.loads((tmp_path / "splits" / "report.json").read_text())
    assert report["valid_pairs"] == 8 and report["skipped"] == []
    assert report["mask_modes"] == {"I;16": 4, "P": 4} and report["mask_rule"]["rule"] == "0/1"
    assert report["class_pixels"]["1"] > 0


# --- mask naming ---------------------------------------------------------------------------------


def test_mask_suffix_pairs_and_reports(tmp_path, params):
    raw = tmp_path / "raw"
    write_folder_dataset(raw, [f"{i:04d}" for i in range(8)])
    for mask in sorted((raw / "masks").iterdir()):
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    Image.new("L", (64, 48)).save(raw / "masks" / "stray.png")
    with pytest.raises(SegpipeError, match=r"set data.mask_suffix: '_mask'"):
        split.run(params.split, params.seed, raw, tmp_path / "splits", mask_suffix="")
    split.run(params.split, params.seed, raw, tmp_path / "splits", mask_suffix="_mask")
    found = split_stems(tmp_path / "splits")
    assert sorted(s for part in found.values() for s in part) == [f"{i:04d}" for i in range(8)]
    test = read_split(tmp_path / "splits" / "test.csv")
    assert all(
        m.endswith(f"/{s}_mask.png") for s, m in zip(test["stem"], test["mask"], strict=True)
    )
    report = json.loads((tmp_path / "splits" / "report.json").read_text())
    (skipped,) = report["skipped"]
    assert skipped["file"].endswith("masks/stray.png")
    assert "data.mask_suffix '_mask'" in skipped["reason"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("masks/_m", "data.mask_suffix: the end of a mask's file name"),
        (" _mask", "data.mask_suffix: the end of a mask's file name"),
        (3, "data.mask_suffix: expected str, got 3"),
    ],
)
def test_mask_suffix_is_validated(tmp_path, value, message):
    params = tiny_params()
    path = write_params(tmp_path / "params.yaml", params)
    text = path.read_text().replace("mask_suffix: ''", f"mask_suffix: {json.dumps(value)}")
    path.write_text(text)
    with pytest.raises(SegpipeError, match=message):
        load_params(path)


def test_repository_params_default_to_no_suffix():
    assert load_params(REPO / "params.yaml").data.mask_suffix == ""


# --- folders as users have them --------------------------------------------------------------


def test_subfolders_are_walked_and_other_files_named(tmp_path, params, caplog):
    ext = tmp_path / "ext"
    for sub in ("patient 1", "patient2"):
        photo, mask = photo_and_mask(40, 48, seed=len(sub))
        for i in range(4):
            _write(Image.fromarray(photo), ext / "images" / sub / f"{i:04d}.jpg")
            _write(Image.fromarray(mask), ext / "masks" / sub / f"{i:04d}.png")
    (ext / "images" / "notes.txt").write_text("not an image")
    (ext / "images" / "IMG_0001.HEIC").write_bytes(b"heic")
    (ext / "images" / ".DS_Store").write_bytes(b"junk")
    _write(Image.new("RGB", (4, 4)), ext / "images" / ".ipynb_checkpoints" / "0000.jpg")
    data = dataclasses.replace(params.data, source="folder", path=str(ext))
    with caplog.at_level(logging.WARNING):
        download.run(data, params.seed, tmp_path / "raw")
    (line,) = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert "ignored 2 file(s)" in line and "IMG_0001.HEIC" in line and "notes.txt" in line
    split.run(params.split, params.seed, tmp_path / "raw", tmp_path / "splits")
    found = sorted(s for part in split_stems(tmp_path / "splits").values() for s in part)
    assert found == [f"{sub}/{i:04d}" for sub in ("patient 1", "patient2") for i in range(4)]


def test_scan_folder_names_duplicates_and_skips_the_output(tmp_path):
    for name in ("a.jpg", "a.PNG", "b.webp", "out/c.png"):
        _write(Image.new("RGB", (4, 4)), tmp_path / name)
    scan = scan_folder(tmp_path, exclude=tmp_path / "out")
    assert list(scan.images) == ["a", "b"]
    assert [p.name for p in scan.duplicates] == ["a.jpg"]
    with pytest.raises(SegpipeError, match=r"two files share the stem 'a' \(a.PNG, a.jpg\)"):
        scan.require_unique_stems()


def test_links_leaving_the_folder_are_skipped(tmp_path, params, caplog):
    """`masks/passwd.png -> /etc/passwd` used to copy that file into data/imported (and a
    remote)."""
    ext = write_folder_dataset(tmp_path / "ext", [f"{i:04d}" for i in range(6)])
    secret = tmp_path / "secret.png"
    Image.new("L", (64, 48)).save(secret)
    (ext / "masks" / "0006.png").symlink_to(secret)
    (ext / "images" / "0006.jpg").symlink_to("0000.jpg")  # inside the folder: read
    (ext / "masks" / "linked").symlink_to(tmp_path, target_is_directory=True)
    data = dataclasses.replace(params.data, source="folder", path=str(ext))
    with caplog.at_level(logging.WARNING):
        download.run(data, params.seed, tmp_path / "raw")
    (line,) = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert "skipped 2 symbolic link(s)" in line and "0006.png" in line and "linked" in line
    raw = tmp_path / "raw"
    assert not (raw / "masks" / "0006.png").exists() and not (raw / "masks" / "linked").exists()
    assert (raw / "images" / "0006.jpg").read_bytes() == (ext / "images" / "0000.jpg").read_bytes()


def test_train_val_test_folders_are_all_used(tmp_path, params, caplog):
    """A public layout with train/, val/ and test/ used to keep only the largest subset."""
    ext = tmp_path / "ext"
    for first, (subset, n) in enumerate((("train", 6), ("val", 3), ("test", 3))):
        write_folder_dataset(ext / subset, [f"{i:04d}" for i in range(n)], first_seed=10 * first)
    shutil.copytree(ext / "val", ext / "val_copy")  # the same file names: a copy, skipped
    data = dataclasses.replace(params.data, source="folder", path=str(ext))
    with caplog.at_level(logging.WARNING):
        assert download.run(data, params.seed, tmp_path / "raw") == 12
    messages = [r.getMessage() for r in caplog.records]
    assert any("3 image/mask folder pairs found, all are used" in m for m in messages)
    assert any(
        "val_copy/images: a copy of" in m and m.endswith("val/images (the same files)")
        for m in messages
    )
    split.run(params.split, params.seed, tmp_path / "raw", tmp_path / "splits")
    found = sorted(s for part in split_stems(tmp_path / "splits").values() for s in part)
    assert found == sorted(
        f"{subset}/{i:04d}"
        for subset, n in (("train", 6), ("val", 3), ("test", 3))
        for i in range(n)
    )
