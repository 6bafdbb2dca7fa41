"""Every field of a COCO file is checked for the type and range the format defines, and every
annotation that draws no pixel is named: a field the mask depends on leaves its image out (or,
for ids and names, stops the stage), ``bbox`` and ``area`` are reported and not used. EXIF-turned
photos whose size cannot tell which pixels were annotated follow ``data.coco.exif``, and the
report says so."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from segpipe.data.images import read_image
from segpipe.data.source_report import read_source_report
from segpipe.errors import SegpipeError

from .annotations import CocoFile, polygon_mask, rectangle, rle_counts, save_photo
from .realdata import save_rotated_photo
from .test_coco import SQUARE, H, W, coco_data, convert, mask_of

MISSING = object()
"""A field left out of its entry."""


def export(root: Path, target: str, key: str, value: object) -> Path:
    """Photos ``a`` and ``b``, each with a cat square; ``target`` (``annotation`` or ``image``
    of ``b``) has ``key`` set to ``value`` (or removed)."""
    coco = CocoFile()
    cat = coco.category(1, "cat")
    coco.category(2, "dog")
    for stem in ("a", "b"):
        save_photo(root / "images" / f"{stem}.png", H, W)
        coco.annotate(coco.image(f"{stem}.png", H, W), cat, [SQUARE])
    entry = {"annotation": coco.annotations, "image": coco.images, "category": coco.categories}
    fields = entry[target][-1]
    if value is MISSING:
        del fields[key]
    else:
        fields[key] = value
    coco.write(root / "annotations.json")
    return root


def problems(raw: Path) -> list[tuple[str, str, str]]:
    return [(p.item, p.kind, p.reason) for p in read_source_report(raw).problems]


LEAVE_OUT = [  # (target, key, value, what the reason says): image b is left out
    *[
        ("annotation", "segmentation", v, "has no segmentation" if v is MISSING else said)
        for v, said in (
            (MISSING, ""),
            ([], "segmentation is empty ([]: a box-only annotation?)"),
            ({}, "segmentation is empty ({}: a box-only annotation?)"),
            ("10 10 20 20", "segmentation must be polygons (a list) or RLE (an object), got str"),
            (5, "got int"),
            (None, "got NoneType"),
            (True, "got bool"),
        )
    ],
    *[
        ("annotation", "iscrowd", v, f"iscrowd must be 0 or 1 (an integer), got {v!r}")
        for v in ("0", "1", 2, -1, True, 1.0, None, [0])
    ],
    *[
        ("image", key, v, f"{key} must be a positive integer, got {v!r}")
        for key in ("width", "height")
        for v in (f"{W}", 0, -3, float(W), None, True)
    ],
]


@pytest.mark.parametrize(("target", "key", "value", "said"), LEAVE_OUT)
def test_a_field_the_mask_depends_on_leaves_its_image_out(tmp_path, target, key, value, said):
    raw = convert(export(tmp_path / "export", target, key, value))
    assert sorted(p.name for p in (raw / "masks").iterdir()) == ["a.png"]
    (item, kind, reason), *_ = problems(raw)
    assert item == "image 'b.png'" and said in reason, reason
    assert kind == ("bad_field" if target == "image" else "bad_segmentation")


REPORTED = [  # (key, value): image b is converted, the field named (an id in the item too)
    *[("bbox", v) for v in ("0,0,1,1", [0, 0, 1], [0, 0, -1, 1], [0, 0, "1", 1], None, {})],
    ("bbox", [0, 0, math.inf, 1]),
    *[("area", v) for v in ("5", -1, None, [], True, math.nan)],
    *[("id", v) for v in (2.5, None, [2], True)],
]


@pytest.mark.parametrize(("key", "value"), REPORTED)
def test_bbox_and_area_are_checked_and_reported(tmp_path, key, value):
    raw = convert(export(tmp_path / "export", "annotation", key, value))
    assert np.array_equal(mask_of(raw, "b") == 1, polygon_mask(H, W, SQUARE))
    (item, kind, reason), *_ = problems(raw)
    name = repr(value) if key == "id" else "2"  # an annotation is named by its id
    assert item == f"annotation {name} of image 'b.png'" and kind == "bad_field"
    assert reason.startswith(f"{key} must be ")
    assert "not used" in reason or key == "id"


FATAL = [  # (target, key, value): the stage stops, naming the key
    *[("annotation", k, v) for k in ("image_id", "category_id") for v in (1.5, None, [1], True)],
    *[("annotation", k, MISSING) for k in ("image_id", "category_id")],
    *[("image", "id", v) for v in (1.5, None, MISSING, False)],
    *[("image", "file_name", v) for v in (5, None, MISSING, ["b.png"])],
    *[("category", "name", v) for v in (5, None, MISSING)],
    *[("category", "id", v) for v in (2.0, None, MISSING)],
]


@pytest.mark.parametrize(("target", "key", "value"), FATAL)
def test_ids_and_names_of_the_wrong_type_stop_the_stage(tmp_path, target, key, value):
    root = export(tmp_path / "export", target, key, value)
    with pytest.raises(SegpipeError) as caught:
        convert(root)
    message = str(caught.value)
    assert message.startswith(f"{root / 'annotations.json'}: ") and f"'{key}'" in message
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("segmentation", "what"),
    [
        ([[1.1, 1.1, 1.3, 1.1, 1.3, 1.3]], "a polygon smaller than a pixel"),
        ({"size": [H, W], "counts": [H * W]}, "an RLE of no pixel"),
        ({"size": [H, W], "counts": rle_counts(np.zeros((H, W), bool))}, "zeros"),
    ],
)
def test_an_annotation_that_draws_no_pixel_is_named(tmp_path, segmentation, what):
    raw = convert(export(tmp_path / "export", "annotation", "segmentation", segmentation))
    assert (mask_of(raw, "b") == 0).all()
    assert problems(raw) == [
        (
            "annotation 2 of image 'b.png'",
            "draws_nothing",
            "its segmentation covers no pixel centre (thinner than a pixel?): nothing drawn",
        )
    ]


def square_export(root: Path, drawn_on: str) -> tuple[Path, np.ndarray]:
    """A square photo stored turned (EXIF orientation 6) with a red box, annotated on the
    photo ``drawn_on`` ``shown`` or ``stored``; returns the export and where the box is shown."""
    side = 32
    photo = np.full((side, side, 3), 120, np.uint8)
    box = rectangle(3, 5, 10, 30)
    red = polygon_mask(side, side, box)
    photo[red] = (230, 20, 20)
    (root / "images").mkdir(parents=True)
    save_rotated_photo(photo, root / "images" / "sq.png")
    if drawn_on == "stored":
        ys, xs = np.nonzero(np.rot90(red, k=1))
        box = rectangle(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    coco = CocoFile()
    cat = coco.category(1, "cat")
    coco.category(2, "dog")
    coco.annotate(coco.image("sq.png", side, side), cat, [box])
    coco.write(root / "annotations.json")
    return root, red


@pytest.mark.parametrize("drawn_on", ["shown", "stored"])
def test_square_exif_photos_follow_data_coco_exif_and_say_so(tmp_path, drawn_on):
    root, red = square_export(tmp_path / "export", drawn_on)
    data = coco_data(root)
    data = dataclasses.replace(data, coco=dataclasses.replace(data.coco, exif=drawn_on))
    raw = convert(root, data)
    upright = read_image(raw / "images" / "sq.png")
    assert np.array_equal(mask_of(raw, "sq") == 1, red)
    assert (upright[red][:, 0] > 180).all()
    (item, kind, reason), *_ = problems(raw)
    other = "stored" if drawn_on == "shown" else "shown"
    assert (item, kind) == ("image 'sq.png'", "exif_undecided")
    assert f"taken as drawn on the photo as {drawn_on} (data.coco.exif: {drawn_on})" in reason
    assert f"set data.coco.exif: {other}" in reason


def test_the_wrong_exif_setting_turns_the_mask_and_is_named(tmp_path):
    """The case that cannot be decided: with the default, a tool that drew on stored pixels
    gets a turned mask, and the report names the image and the setting to change."""
    root, red = square_export(tmp_path / "export", "stored")
    raw = convert(root)
    assert not np.array_equal(mask_of(raw, "sq") == 1, red)
    assert "set data.coco.exif: stored" in problems(raw)[0][2]


def test_an_absolute_file_name_inside_the_images_folder_is_used(tmp_path):
    root = tmp_path / "export"
    coco = CocoFile()
    cat = coco.category(1, "cat")
    coco.category(2, "dog")
    save_photo(root / "images" / "a.png", H, W)
    save_photo(tmp_path / "elsewhere" / "b.png", H, W)
    inside = (root / "images" / "a.png").absolute().as_posix()
    coco.annotate(coco.image(inside, H, W), cat, [SQUARE])
    coco.annotate(coco.image((tmp_path / "elsewhere" / "b.png").as_posix(), H, W), cat, [SQUARE])
    coco.write(root / "annotations.json")
    raw = convert(root)
    assert sorted(p.name for p in (raw / "images").iterdir()) == ["a.png"]
    assert [(item, kind) for item, kind, _ in problems(raw)] == [
        (f"image '{(tmp_path / 'elsewhere' / 'b.png').as_posix()}'", "outside_images")
    ]
    assert "an absolute path outside" in problems(raw)[0][2]
