"""data.format: coco. The download stage's masks against independent drawings, pixel by pixel:
polygons drawn by PIL, RLE decoded by hand (tests/annotations.py), never by pycocotools."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.config import DataConfig
from segpipe.data import download, split
from segpipe.data.images import read_image
from segpipe.data.masks import RULE_FILE, load_rule, read_pair
from segpipe.data.source_report import read_source_report
from segpipe.data.validate import DatasetCheck, inspect_pair
from segpipe.errors import SegpipeError

from .annotations import (
    CocoFile,
    decode_counts,
    edge_margin,
    polygon_mask,
    rectangle,
    rle_counts,
    rle_string,
    save_photo,
    string_counts,
)
from .helpers import TINY, stage_in_process, tiny_params, write_params
from .realdata import KVASIR, save_rotated_photo
from .test_bad_inputs import error_line, snapshot, warnings_of

TINY_SPLIT = {key: value for key, value in TINY.items() if key.startswith("split__")}
CLASSES = ("background", "cat", "dog")
H, W = 30, 40
IGNORE = 255


def coco_data(path: Path, **changes: object) -> DataConfig:
    """The tiny params' data section for a COCO export at ``path``: classes cat and dog,
    ignore_index 255; ``changes`` to it or (annotations, images, extra_categories) to data.coco."""
    data = tiny_params().data
    coco_keys = {
        k: changes.pop(k) for k in ("annotations", "images", "extra_categories") if k in changes
    }
    base = {"source": "folder", "classes": CLASSES, "ignore_index": IGNORE, **changes}
    coco = dataclasses.replace(data.coco, **coco_keys)
    return dataclasses.replace(data, format="coco", path=str(path), coco=coco, **base)


def convert(root: Path, data: DataConfig | None = None) -> Path:
    out = root.parent / "raw"
    download.run(data or coco_data(root), 0, out)
    return out


def mask_of(raw: Path, stem: str) -> np.ndarray:
    image = Image.open(raw / "masks" / f"{stem}.png")
    assert image.mode == "P"  # a palette PNG: its pixel values are the class indices
    return np.asarray(image)


# Shapes whose every pixel centre lies at least 1/5 pixel from every edge (see edge_margin).
SQUARE = rectangle(2, 3, 12, 11)
TRIANGLE = [18, 2, 37.5, 2, 18, 21.5]
SLANTED = [3.2, 14, 13.8, 14.2, 14, 27, 2.8, 26.8]
PART_A, PART_B = rectangle(25, 24, 29, 28), rectangle(32, 22, 38, 29)


def test_test_shapes_are_unambiguous():
    for xy in (SQUARE, TRIANGLE, SLANTED, PART_A, PART_B):
        assert edge_margin(H, W, xy) >= 0.2, xy


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A COCO export of five images and the masks expected for them, drawn independently.

    Category ids are not class indices (dog 3, cat 7), so only names can map them."""
    root = tmp_path / "export"
    coco = CocoFile()
    dog, cat = coco.category(3, "dog"), coco.category(7, "cat")
    expected = {}
    for stem in ("shapes", "overlap", "rle", "crowd", "empty"):
        save_photo(root / "images" / f"{stem}.png", H, W)

    # Polygons: a square, a triangle, a slanted quadrilateral, and one annotation of two parts.
    image = coco.image("shapes.png", H, W)
    coco.annotate(image, cat, [SQUARE])
    coco.annotate(image, dog, [TRIANGLE])
    coco.annotate(image, cat, [SLANTED])
    coco.annotate(image, dog, [PART_A, PART_B])
    want = np.zeros((H, W), np.uint8)
    for xy, value in ((SQUARE, 1), (TRIANGLE, 2), (SLANTED, 1), (PART_A, 2), (PART_B, 2)):
        want[polygon_mask(H, W, xy)] = value
    expected["shapes"] = want

    # Overlaps: the small cat is listed before the large dog it lies on, and is drawn over it;
    # two instances of equal size: the later one is on top.
    image = coco.image("overlap.png", H, W)
    big, small = rectangle(2, 2, 30, 24), rectangle(8, 6, 20, 16)
    first, second = rectangle(30, 2, 36, 8), rectangle(33, 5, 39, 11)
    coco.annotate(image, cat, [small])
    coco.annotate(image, dog, [big])
    coco.annotate(image, cat, [first])
    coco.annotate(image, dog, [second])
    want = np.zeros((H, W), np.uint8)
    for xy, value in ((big, 2), (small, 1), (first, 1), (second, 2)):
        want[polygon_mask(H, W, xy)] = value
    expected["overlap"] = want

    # RLE: a compressed string (an irregular blob) and uncompressed counts, decoded by hand.
    yy, xx = np.mgrid[:H, :W]
    blob = ((yy - 12) ** 2 / 60 + (xx - 12) ** 2 / 90 <= 1) & (xx + yy % 3 != 9)
    bar = (yy >= 20) & (yy < 27) & (xx >= 22) & (xx < 37)
    compressed, plain = rle_string(rle_counts(blob)), rle_counts(bar)
    image = coco.image("rle.png", H, W)
    coco.annotate(image, cat, {"size": [H, W], "counts": compressed})
    coco.annotate(image, dog, {"size": [H, W], "counts": plain})
    want = np.zeros((H, W), np.uint8)
    want[decode_counts(string_counts(compressed), H, W)] = 1
    want[decode_counts(plain, H, W)] = 2
    expected["rle"] = want

    # A crowd of dogs (uncompressed RLE, as COCO stores crowds) with a cat in front of it.
    crowd = (yy >= 2) & (yy < 26) & (xx >= 2) & (xx < 34)
    in_front = rectangle(10, 8, 18, 20)
    image = coco.image("crowd.png", H, W)
    coco.annotate(image, dog, {"size": [H, W], "counts": rle_counts(crowd)}, iscrowd=1)
    coco.annotate(image, cat, [in_front])
    want = np.zeros((H, W), np.uint8)
    want[decode_counts(rle_counts(crowd), H, W)] = IGNORE
    want[polygon_mask(H, W, in_front)] = 1
    expected["crowd"] = want

    coco.image("empty.png", H, W)  # listed, no annotation: all background
    expected["empty"] = np.zeros((H, W), np.uint8)
    coco.write(root / "annotations.json")
    return root, expected


def test_masks_are_the_independently_drawn_ones(export):
    root, expected = export
    raw = convert(root)
    assert sorted(p.name for p in (raw / "masks").iterdir()) == sorted(
        f"{stem}.png" for stem in expected
    )
    for stem, want in expected.items():
        got = mask_of(raw, stem)
        assert got.shape == want.shape, stem
        assert np.array_equal(got, want), (stem, np.argwhere(got != want)[:5])
    for stem in expected:  # the photos are copied as they are
        assert (raw / "images" / f"{stem}.png").read_bytes() == (
            root / "images" / f"{stem}.png"
        ).read_bytes()
    report = read_source_report(raw)
    assert report.format == "coco" and report.problems == []
    assert report.counts["images_written"] == 5 and report.counts["background_only"] == 1
    assert report.counts["crowd_regions"] == 1 and report.counts["instances"] == 11


def test_hand_codec_agrees_with_pycocotools():
    """The tests' RLE codec is COCO's: the same strings as pycocotools for the same masks."""
    from pycocotools import mask as mask_api

    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((H, W)) < rng.uniform(0.05, 0.95)
        counts = rle_counts(mask)
        assert np.array_equal(decode_counts(counts, H, W), mask)
        encoded = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        assert rle_string(counts) == encoded
        assert string_counts(encoded) == counts


def test_crowd_regions_take_their_class_without_ignore_index(export):
    root, expected = export
    raw = convert(root, coco_data(root, ignore_index=None))
    want = expected["crowd"].copy()
    want[want == IGNORE] = 2
    assert np.array_equal(mask_of(raw, "crowd"), want)


def test_split_stage_reads_the_masks_and_reports_the_export(export, tmp_path):
    root, expected = export
    raw = convert(root)
    p = tiny_params()
    split.run(p.split, 0, raw, tmp_path / "splits", 3, IGNORE)
    report = json.loads((tmp_path / "splits" / "report.json").read_text())
    assert report["valid_pairs"] == 5 and report["skipped"] == []
    assert report["mask_rule"]["rule"] == "indices"
    want = sum(np.bincount(m.ravel(), minlength=256) for m in expected.values())
    assert report["class_pixels"] == {str(c): int(want[c]) for c in range(3)}
    assert report["ignored_pixels"] == int(want[IGNORE])
    assert report["source"]["format"] == "coco"
    rule = load_rule(tmp_path / "splits" / RULE_FILE)
    _, labels = read_pair(raw / "images" / "crowd.png", raw / "masks" / "crowd.png", rule)
    assert (labels == 255).sum() == (expected["crowd"] == IGNORE).sum()


def test_extra_categories(tmp_path):
    root = tmp_path / "export"
    coco = CocoFile()
    cat, car = coco.category(1, "cat"), coco.category(2, "car")
    dog = coco.category(3, "dog")
    save_photo(root / "images" / "a.png", H, W)
    image = coco.image("a.png", H, W)
    coco.annotate(image, car, [rectangle(0, 0, 20, 20)])
    coco.annotate(image, cat, [rectangle(5, 5, 10, 10)])
    coco.annotate(image, dog, [rectangle(30, 20, 35, 25)])
    coco.write(root / "annotations.json")
    with pytest.raises(SegpipeError) as error:
        convert(root)
    assert str(error.value) == (
        f"{root}/annotations.json: categories not in data.classes: 'car' (1 annotations); add "
        "them to data.classes, or set data.coco.extra_categories to background or ignore_index "
        "to leave their pixels out (the file's categories: 'cat', 'car', 'dog')"
    )
    car_box, cat_box = polygon_mask(H, W, rectangle(0, 0, 20, 20)), rectangle(5, 5, 10, 10)
    for choice, value in (("background", 0), ("ignore_index", IGNORE)):
        got = mask_of(convert(root, coco_data(root, extra_categories=choice)), "a")
        want = np.zeros((H, W), np.uint8)
        want[car_box] = value
        want[polygon_mask(H, W, cat_box)] = 1
        want[polygon_mask(H, W, rectangle(30, 20, 35, 25))] = 2
        assert np.array_equal(got, want), choice


def test_a_class_without_category_stops_the_stage(tmp_path):
    root = tmp_path / "export"
    coco = CocoFile()
    coco.category(1, "cat")
    coco.category(2, "Dog")
    save_photo(root / "images" / "a.png", H, W)
    coco.image("a.png", H, W)
    coco.write(root / "annotations.json")
    with pytest.raises(SegpipeError) as error:
        convert(root)
    assert str(error.value) == (
        f"{root}/annotations.json: categories not in data.classes: 'Dog' (0 annotations); add "
        "them to data.classes, or set data.coco.extra_categories to background or ignore_index "
        "to leave their pixels out; data.classes 'dog': no category of the file has this name; "
        "check the spelling (names must match exactly) or remove them (the file's categories: "
        "'cat', 'Dog')"
    )


def test_exif_rotated_photos_line_up_with_their_masks(tmp_path):
    """Annotation tools annotate a photo as viewers show it, EXIF orientation applied: the JSON
    size is the shown one. A JSON size that is the stored one means the tool drew on the stored
    pixels: the mask is drawn so and turned like the photo. Either way the pair lines up."""
    root = tmp_path / "export"
    shown_h, shown_w = 40, 30
    photo = np.full((shown_h, shown_w, 3), 120, np.uint8)
    red = polygon_mask(shown_h, shown_w, rectangle(3, 5, 10, 30))
    photo[red] = (230, 20, 20)
    (root / "images").mkdir(parents=True)
    save_rotated_photo(photo, root / "images" / "shown.png")  # stored 40x30, Orientation 6
    save_rotated_photo(photo, root / "images" / "stored.png")
    stored_red = np.rot90(red, k=1)  # where the red pixels are as stored
    ys, xs = np.nonzero(stored_red)
    coco = CocoFile()
    cat = coco.category(1, "cat")
    coco.category(2, "dog")
    coco.annotate(coco.image("shown.png", shown_h, shown_w), cat, [rectangle(3, 5, 10, 30)])
    stored_box = rectangle(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    coco.annotate(coco.image("stored.png", shown_w, shown_h), cat, [stored_box])
    coco.write(root / "annotations.json")
    raw = convert(root)
    assert read_source_report(raw).counts["drawn_as_stored"] == 1
    for stem in ("shown", "stored"):
        upright = read_image(raw / "images" / f"{stem}.png")  # as every stage reads photos
        mask = mask_of(raw, stem)
        assert mask.shape == upright.shape[:2] == (shown_h, shown_w)
        assert np.array_equal(mask == 1, red), stem
        assert (upright[mask == 1][:, 0] > 180).all() and (upright[mask == 0][:, 0] < 180).all()
    check = DatasetCheck(3, IGNORE)  # the split stage's check of each pair
    for stem in ("shown", "stored"):
        pair = inspect_pair(
            stem, raw / "images" / f"{stem}.png", raw / "masks" / f"{stem}.png", False
        )
        assert check.record(pair)
    assert check.skipped == [] and check.exif_turned == 2


def test_images_folder_and_annotation_file_are_found(tmp_path):
    """The layouts tools export: CVAT (annotations/instances_default.json + images/), Label
    Studio (result.json whose file_names start with images/), Roboflow (the JSON among the
    images); and COCO's own (train2017/ + annotations/), named by data.coco.*."""
    layouts = {
        "cvat": ("annotations/instances_default.json", "images", "a.png", None),
        "label_studio": ("result.json", "images", "images/a.png", None),
        "roboflow": ("train/_annotations.coco.json", "train", "a.png", None),
        "coco": ("annotations/instances_train2017.json", "train2017", "a.png", "train2017"),
    }
    for name, (json_path, folder, file_name, images) in layouts.items():
        root = tmp_path / name
        save_photo(root / folder / "a.png", H, W)
        coco = CocoFile()
        cat = coco.category(1, "cat")
        coco.category(2, "dog")
        coco.annotate(coco.image(file_name, H, W), cat, [SQUARE])
        coco.write(root / json_path)
        if name == "coco":
            (root / "annotations" / "captions_train2017.json").write_text("{}")
            with pytest.raises(SegpipeError, match="set data.coco.annotations"):
                convert(root)
        data = coco_data(root, images=images, annotations=json_path if images else None)
        raw = convert(root, data)
        assert np.array_equal(
            mask_of(raw, Path(file_name).stem if name != "label_studio" else "images/a") == 1,
            polygon_mask(H, W, SQUARE),
        ), name


# --- bad input through the stage scripts: what the user sees ---------------------------------


def stage_params(tmp_path: Path, root: Path, **edits: object) -> Path:
    return write_params(
        tmp_path / "params.yaml",
        data__source="folder",
        data__format="coco",
        data__path=str(root),
        data__classes=list(CLASSES),
        data__ignore_index=IGNORE,
        **edits,
    )


def download_stage(params: Path, out: Path):
    return stage_in_process("download.py", "--params", params, "--out", out)


def small_export(root: Path) -> CocoFile:
    """Three photos, each with a cat and a dog."""
    coco = CocoFile()
    cat, dog = coco.category(1, "cat"), coco.category(2, "dog")
    for stem in ("a", "b", "c"):
        save_photo(root / "images" / f"{stem}.png", H, W)
        image = coco.image(f"{stem}.png", H, W)
        coco.annotate(image, cat, [SQUARE])
        coco.annotate(image, dog, [TRIANGLE])
    return coco


def test_files_that_are_not_coco_stop_the_stage_and_keep_the_last_output(tmp_path):
    root, out = tmp_path / "export", tmp_path / "raw"
    ann = small_export(root).write(root / "annotations.json")
    params = stage_params(tmp_path, root)
    assert download_stage(params, out).returncode == 0
    before = snapshot(out)
    cases = [
        ('{"images": [', f"error: {ann}: not valid JSON (Expecting value: line 1 column 13)"),
        (
            "[1, 2]",
            f"error: {ann}: not a COCO annotation file (a JSON object with images, annotations "
            "and categories), got a JSON list",
        ),
        (
            '{"images": [], "annotations": []}',
            f"error: {ann}: not a COCO annotation file: 'categories' must be a list, got none",
        ),
        (
            '{"images": [{"id": 1}], "annotations": [], "categories": []}',
            f"error: {ann}: image 1 has no 'file_name' (a string expected)",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], '
            '"annotations": [], "categories": []}',
            f"error: {ann}: images[1] and images[0] have the same id 1; each needs its own",
        ),
    ]
    for text, line in cases:
        ann.write_text(text)
        assert error_line(download_stage(params, out)) == line
        assert snapshot(out) == before
    ann.unlink()
    line = error_line(download_stage(params, out))
    assert line == (
        f"error: data.path: {root} holds no JSON file(s); a COCO export has one annotation "
        "file: set data.coco.annotations to it (relative to data.path)"
    )
    for name in ("train.json", "val.json"):
        small_export(root).write(root / name)
    line = error_line(download_stage(params, out))
    assert line == (
        f"error: data.path: {root} holds 2 JSON file(s): train.json, val.json; a COCO export "
        "has one annotation file: set data.coco.annotations to it (relative to data.path)"
    )
    named = stage_params(tmp_path, root, data__coco__annotations="val.json")
    assert download_stage(named, out).returncode == 0
    after = snapshot(out)
    assert after.pop("source.json") != before.pop("source.json")  # it names val.json
    assert after == before  # val.json is the same export


def test_items_that_do_not_fit_are_named_and_left_out(tmp_path):
    """Per-item problems: a warning naming each, the item left out, the rest converted; the
    split report names every one."""
    root, out = tmp_path / "export", tmp_path / "raw"
    coco = small_export(root)
    cat = 1
    image = coco.image("d.png", H, W)
    save_photo(root / "images" / "d.png", H, W)
    short = coco.annotate(image, cat, [[1, 1, 5, 5], SQUARE])  # a 2-point polygon, and a good one
    for stem, segmentation in (
        ("e", {"size": [W, H], "counts": rle_counts(np.zeros((W, H), bool))}),  # size swapped
        ("f", {"size": [H, W], "counts": [5, 3]}),  # runs cover 8 of 1200 pixels
        ("g", [[1, 2, 3, 4, 5]]),  # odd number of coordinates
        ("h", {"size": [H, W], "counts": "1P"}),  # cut off in a run
    ):
        save_photo(root / "images" / f"{stem}.png", H, W)
        coco.annotate(coco.image(f"{stem}.png", H, W), cat, segmentation)
    save_photo(root / "images" / "i.png", H + 1, W)  # the JSON says 40x30
    coco.annotate(coco.image("i.png", H, W), cat, [SQUARE])
    save_photo(root / "images" / "j.png", H, W)
    coco.annotate(coco.image("j.png", H, W), 9, [SQUARE])  # no category 9
    coco.image("missing.png", H, W)
    coco.annotate(99, cat, [SQUARE])  # no image 99
    save_photo(root / "images" / "unlisted.png", H, W)
    coco.write(root / "annotations.json")
    result = download_stage(stage_params(tmp_path, root), out)
    expected = [
        "annotation 14: its image_id 99 is not an image of annotations.json: left out",
        f"annotation {short} of image 'd.png': polygon 0 has 2 point(s), a polygon needs at "
        "least 3: it covers no pixel and is left out",
        "image 'e.png': annotation 8: RLE size 30x40 differs from the image's 40x30 (width x "
        "height): the image is left out",
        "image 'f.png': annotation 9: RLE counts cover 8 pixels, the image has 30x40 = 1200: the "
        "image is left out",
        "image 'g.png': annotation 10: polygon 0 has an odd number of coordinates (5): the image "
        "is left out",
        "image 'h.png': annotation 11: compressed RLE counts end in the middle of a run: the "
        "image is left out",
        "image 'i.png': annotated at 40x30 (width x height in annotations.json), but the image is "
        "40x31 as shown: left out",
        "image 'j.png': annotation 13: category_id 9 is no category of annotations.json: the "
        "image is left out",
        f"image 'missing.png': not found in {root}/images: it and its 0 annotation(s) are left out",
        f"file 'unlisted.png': in {root}/images but not listed in annotations.json: not used",
    ]
    warned = [line.split(": ", 1)[1] for line in warnings_of(result)]
    assert warned[: len(expected)] == expected
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    assert np.array_equal(mask_of(out, "d") == 1, polygon_mask(H, W, SQUARE))
    splits = tmp_path / "splits"
    params = stage_params(tmp_path, root, **TINY_SPLIT)
    result = stage_in_process("split.py", "--params", params, "--raw", out, "--out", splits)
    assert any(
        "the download stage left out or changed 10 item(s)" in w for w in warnings_of(result)
    )
    markdown = (splits / "report.md").read_text()
    for line in expected:
        assert f"- {line}" in markdown
    report = json.loads((splits / "report.json").read_text())
    assert report["source"]["problems_by_kind"] == {
        "bad_segmentation": 5,
        "missing_image": 1,
        "short_polygon": 1,
        "size_mismatch": 1,
        "unknown_image_id": 1,
        "unlisted_image": 1,
    }


@pytest.mark.skipif(not KVASIR.is_dir(), reason="the shared Kvasir-SEG copy is not present")
def test_real_masks_survive_a_coco_round_trip(tmp_path):
    """50 Kvasir-SEG polyp masks (332x487 to 1920x1072) encoded as COCO's compressed RLE by
    pycocotools, converted by the download stage: the very same masks come back."""
    from pycocotools import mask as mask_api

    names = sorted(p.stem for p in (KVASIR / "masks").glob("*.png"))[::20][:50]
    root = tmp_path / "export"
    root.mkdir()
    (root / "images").symlink_to(KVASIR / "images")  # read in place: nothing is copied in
    coco = CocoFile()
    polyp = coco.category(1, "polyp")
    originals = {}
    for name in names:
        originals[name] = np.asarray(Image.open(KVASIR / "masks" / f"{name}.png")) == 255
        height, width = originals[name].shape
        rle = mask_api.encode(np.asfortranarray(originals[name].astype(np.uint8)))
        segmentation = {"size": [height, width], "counts": rle["counts"].decode()}
        coco.annotate(coco.image(f"{name}.jpg", height, width), polyp, segmentation)
    coco.write(root / "annotations.json")
    data = coco_data(root, classes=("background", "polyp"), ignore_index=None)
    raw = convert(root, data)
    report = read_source_report(raw)
    assert {p.kind for p in report.problems} == {"unlisted_image"}  # the other 950 photos
    assert report.counts["images_written"] == len(names)
    for name, original in originals.items():
        assert np.array_equal(mask_of(raw, name), original.astype(np.uint8)), name


def test_a_kaggle_archive_holding_a_coco_export(tmp_path, monkeypatch):
    from segpipe.data import kaggle_source

    def fake_fetch(dataset: str, downloads: Path) -> kaggle_source.Fetched:  # extracted
        small_export(downloads / "export").write(downloads / "export" / "annotations.json")
        spec = dataclasses.replace(kaggle_source.parse_dataset(dataset), version=4)
        return kaggle_source.Fetched(downloads / "export", spec, downloaded=True)

    monkeypatch.setattr(kaggle_source, "fetch_kaggle", fake_fetch)
    out = tmp_path / "raw"
    assert download.run(coco_data(tmp_path, source="kaggle"), 0, out) == 3
    assert json.loads((out / download.KAGGLE_RECORD).read_text())["version"] == 4
    assert read_source_report(out).counts["instances"] == 6
    assert np.array_equal(mask_of(out, "a") == 1, polygon_mask(H, W, SQUARE))


def test_a_link_out_of_the_images_folder_is_not_copied(tmp_path):
    root = tmp_path / "export"
    coco = small_export(root)
    secret = save_photo(tmp_path / "elsewhere" / "private.png", H, W)
    assert secret.size
    (root / "images" / "link.png").symlink_to(tmp_path / "elsewhere" / "private.png")
    coco.annotate(coco.image("link.png", H, W), 1, [SQUARE])
    coco.write(root / "annotations.json")
    raw = convert(root)
    assert not (raw / "images" / "link.png").exists()
    (problem,) = read_source_report(raw).problems
    assert (problem.item, problem.kind) == ("image 'link.png'", "outside_images")
