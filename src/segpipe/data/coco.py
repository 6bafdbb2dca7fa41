"""COCO exports (one annotation JSON + its images) as the normalised dataset the pipeline reads.

Every image the JSON lists is copied as it is into ``images/`` (same relative path) and its
annotations are drawn into one class-index mask, ``masks/<stem>.png`` (a palette PNG whose
pixel values are the classes of ``data.classes``): see :mod:`segpipe.data.coco_masks` for the
overlap and crowd rules. Categories map to ``data.classes`` by name; class 0 is background.

Annotations are drawn at the JSON's ``width x height``, the photo as viewers and annotation tools
show it (EXIF orientation applied, as every stage reads photos); if that is the stored size of a
photo an EXIF tag turns, the mask is drawn as stored and turned like the photo; when the two
sizes are equal, ``data.coco.exif`` says which, and the report names the image. Every field is
checked for the type and range the format defines (:func:`annotation_problem`,
:func:`field_problems`). Problems confined to one item (a missing image, an annotation of an
unknown image, a segmentation that does not fit its image or draws nothing) leave that item out
or are named in ``source.json``, which the split report carries.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segpipe.config import DataConfig
from segpipe.data import coco_masks
from segpipe.data.colours import palette
from segpipe.data.images import (
    UnreadableImageError,
    exif_orientation,
    is_image_file,
    open_image,
    scan_folder,
    short_list,
    shown_size,
    stem_of,
    turn_like,
)
from segpipe.data.source_report import SourceReport
from segpipe.errors import SegpipeError
from segpipe.files import link_or_copy
from segpipe.progress import progress

log = logging.getLogger(__name__)

Id = int | str
COUNTS = (
    "images_listed",
    "annotations",
    "images_written",
    "annotated",
    "background_only",
    "instances",
    "crowd_regions",
    "drawn_as_stored",
)
"""What ``source.json`` counts for a COCO file, in this order: images written with annotations
and without (all background), instances and crowd regions drawn, masks drawn on the stored
pixels of a turned photo (see :meth:`_Conversion._frame`)."""


def find_annotation_file(root: Path, data: DataConfig, what: str = "data.path") -> Path:
    """``data.coco.annotations`` below ``root``, or else the one JSON file below ``root``
    (``what`` names ``root`` for messages: ``data.path``, or the Kaggle dataset)."""
    if data.coco.annotations is not None:
        path = root / data.coco.annotations
        if not path.is_file():
            raise SegpipeError(f"data.coco.annotations: {path} not found")
        return path
    found = _json_files(root)
    if len(found) == 1:
        return found[0]
    names = short_list([p.relative_to(root).as_posix() for p in found])
    relative = "data.path" if what == "data.path" else f"the dataset's folder {root}"
    raise SegpipeError(
        f"{what}: {root} holds {len(found) or 'no'} JSON file(s){': ' + names if found else ''}"
        "; a COCO export has one annotation file: set data.coco.annotations to it (relative to "
        f"{relative})"
    )


def _json_files(root: Path) -> list[Path]:
    found = []
    for parent, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        found += [Path(parent) / n for n in sorted(filenames) if n.lower().endswith(".json")]
    return [p for p in found if not p.name.startswith(".")]


def load_json(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``images``, ``annotations`` and ``categories`` lists of a COCO file.

    Raises:
        SegpipeError: one line naming the file and where it is not valid JSON or not COCO.
    """
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise SegpipeError(
            f"{path}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        ) from None
    except ValueError:
        raise SegpipeError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise SegpipeError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise SegpipeError(
            f"{path}: not a COCO annotation file (a JSON object with images, annotations and "
            f"categories), got a JSON {type(data).__name__}"
        )
    lists = {}
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            got = "none" if key not in data else f"a JSON {type(data[key]).__name__}"
            raise SegpipeError(
                f"{path}: not a COCO annotation file: '{key}' must be a list, got {got}"
            )
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise SegpipeError(f"{path}: {key}[{i}] must be a JSON object, got {entry!r}")
        lists[key] = data[key]
    return lists


def _field(entry: dict, key: str, types: tuple[type, ...], where: str, path: Path) -> Any:
    """``entry[key]``, which must be one of ``types`` (never a bool)."""
    value = entry.get(key)
    if key not in entry or isinstance(value, bool) or not isinstance(value, types):
        what = "has no" if key not in entry else f"has {value!r} as its"
        expected = " or ".join({int: "an integer", str: "a string"}[t] for t in types)
        raise SegpipeError(f"{path}: {where} {what} '{key}' ({expected} expected)")
    return value


def _unique_ids(entries: list[dict], key: str, path: Path) -> dict[Id, dict]:
    """Entries by ``id``; two with one id are an error."""
    by_id: dict[Id, dict] = {}
    first: dict[Id, int] = {}
    for i, entry in enumerate(entries):
        entry_id = _field(entry, "id", (int, str), f"{key}[{i}]", path)
        if entry_id in by_id:
            raise SegpipeError(
                f"{path}: {key}[{i}] and {key}[{first[entry_id]}] have the same id "
                f"{entry_id!r}; each needs its own"
            )
        by_id[entry_id], first[entry_id] = entry, i
    return by_id


def class_indices(
    categories: dict[Id, dict], uses: Counter, data: DataConfig, path: Path
) -> dict[Id, int | None]:
    """The class of each category id: its index in ``data.classes`` (matched by name), or None
    for a category that is not there (allowed by ``data.coco.extra_categories``).

    Raises:
        SegpipeError: a category not in ``data.classes`` (with ``extra_categories: error``), or
            a class (but background) that no category names; one line naming them all and the
            file's categories.
    """
    index = {name: i for i, name in enumerate(data.classes)}
    names = {
        cid: _field(c, "name", (str,), f"category {cid!r}", path) for cid, c in categories.items()
    }
    extra = [cid for cid, name in names.items() if name not in index]
    missing = [c for c in data.classes[1:] if c not in names.values()]
    problems = []
    if extra and data.coco.extra_categories == "error":
        listed = ", ".join(f"{names[c]!r} ({uses[c]} annotations)" for c in extra)
        problems.append(
            f"categories not in data.classes: {listed}; add them to data.classes, or set "
            "data.coco.extra_categories to background or ignore_index to leave their pixels out"
        )
    if missing:
        problems.append(
            f"data.classes {', '.join(map(repr, missing))}: no category of the file has this "
            "name; check the spelling (names must match exactly) or remove them"
        )
    if problems:
        every = ", ".join(repr(n) for n in dict.fromkeys(names.values())) or "none"
        raise SegpipeError(f"{path}: {'; '.join(problems)} (the file's categories: {every})")
    if extra:
        log.warning(
            "%s: categories not in data.classes are drawn as %s: %s",
            path,
            data.coco.extra_categories,
            ", ".join(sorted({names[c] for c in extra})),
        )
    return {cid: index.get(name) for cid, name in names.items()}


def find_images_dir(root: Path, annotations: Path, file_names: list[str], data: DataConfig) -> Path:
    """``data.coco.images`` below ``root``; or else the first of ``root/images``, the JSON's
    folder and ``root`` that holds the most of the listed files."""
    if data.coco.images is not None:
        folder = root / data.coco.images
        if not folder.is_dir():
            raise SegpipeError(f"data.coco.images: {folder} is not a folder")
        return folder
    candidates = list(dict.fromkeys([root / "images", annotations.parent, root]))
    held = [
        sum((c / inside_name(c, f)).is_file() for f in file_names) if c.is_dir() else 0
        for c in candidates
    ]
    if file_names and max(held) == 0:
        raise SegpipeError(
            f"{annotations}: none of its {len(file_names)} images (e.g. {file_names[0]!r}) is in "
            f"{', '.join(c.as_posix() for c in candidates)}; set data.coco.images to the folder "
            "their file_names are relative to (relative to data.path)"
        )
    return candidates[held.index(max(held))]


def inside_name(folder: Path, file_name: str) -> str:
    """``file_name`` relative to ``folder``: as it is if relative; an absolute path inside
    ``folder`` (an export written with full paths) made relative; else unchanged (absolute)."""
    name = Path(file_name)
    if not name.is_absolute():
        return file_name
    for inside, full in ((folder.absolute(), name), (folder.resolve(), name.resolve())):
        try:
            return Path(os.path.normpath(full)).relative_to(inside).as_posix()
        except ValueError:
            continue
    return file_name


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def annotation_problem(entry: dict) -> str | None:
    """Why an annotation's fields that make the mask break the COCO format, or None.

    ``segmentation`` must be polygons (a non-empty list) or RLE (an object): a box-only
    annotation would leave its object as background. ``iscrowd``, if present, must be the
    integer 0 or 1: ``"0"`` is true in a test and would make the object an ignored crowd."""
    if "segmentation" not in entry:
        return "has no segmentation (a box-only annotation?): its object would be background"
    segmentation = entry["segmentation"]
    if not isinstance(segmentation, (list, dict)):
        return (
            "segmentation must be polygons (a list) or RLE (an object), got "
            f"{type(segmentation).__name__} {segmentation!r:.40}"
        )
    if not segmentation:
        return (
            f"segmentation is empty ({segmentation!r}: a box-only annotation?), so it draws no "
            "pixel and its object would be background"
        )
    crowd = entry.get("iscrowd", 0)
    if not (_integer(crowd) and crowd in (0, 1)):
        return f"iscrowd must be 0 or 1 (an integer), got {crowd!r}"
    return None


def field_problems(entry: dict) -> list[str]:
    """What in an annotation's ``id``, ``bbox`` and ``area`` breaks the COCO format; the mask is
    drawn from the segmentation, so they are reported, not used."""
    problems = []
    if "id" in entry and not (_integer(entry["id"]) or isinstance(entry["id"], str)):
        problems.append(f"id must be an integer (or a string), got {entry['id']!r:.40}")
    box = entry.get("bbox")
    if "bbox" in entry and not (
        isinstance(box, list)
        and len(box) == 4
        and all(_number(v) for v in box)
        and box[2] >= 0
        and box[3] >= 0
    ):
        problems.append(
            f"bbox must be [x, y, width, height], 4 finite numbers with width and height >= 0, "
            f"got {box!r:.60}: not used (the mask is drawn from the segmentation)"
        )
    area = entry.get("area")
    if "area" in entry and not (_number(area) and area >= 0):
        problems.append(
            f"area must be a finite number >= 0, got {area!r:.40}: not used (the mask is drawn "
            "from the segmentation)"
        )
    return problems


def _file_name(entry: dict, where: str, path: Path) -> str:
    return _field(entry, "file_name", (str,), where, path).replace("\\", "/")


def _annotations_by_image(
    entries: list[dict], images: dict[Id, dict], path: Path, report: SourceReport
) -> tuple[dict[Id, list[tuple[str, dict]]], Counter]:
    """Each image's annotations (with a name for messages), and the annotations per category.
    An annotation of an image the file does not list is left out and reported."""
    by_image: dict[Id, list[tuple[str, dict]]] = defaultdict(list)
    uses: Counter = Counter()
    for i, entry in enumerate(entries):
        where = f"annotations[{i}]"
        image_id = _field(entry, "image_id", (int, str), where, path)
        category_id = _field(entry, "category_id", (int, str), where, path)
        name = f"annotation {entry['id']!r}" if "id" in entry else where
        if image_id not in images:
            report.problem(
                name,
                "unknown_image_id",
                f"its image_id {image_id!r} is not an image of {path.name}: left out",
            )
            continue
        by_image[image_id].append((name, entry))
        uses[category_id] += 1
    return by_image, uses


class _Conversion:
    """The conversion of one COCO file into ``dest``: images copied, masks drawn, problems
    recorded in ``report``."""

    def __init__(
        self,
        path: Path,
        images_dir: Path,
        classes: dict[Id, int | None],
        data: DataConfig,
        dest: Path,
        report: SourceReport,
    ) -> None:
        self.path, self.images_dir, self.classes, self.data = path, images_dir, classes, data
        self.dest, self.report = dest, report
        self.stems: dict[str, str] = {}  # stem -> file_name, to refuse two images of one stem
        self.palette = palette(data.num_classes).ravel().tolist()

    def image(self, file_name: str, entry: dict, annotations: list[tuple[str, dict]]) -> bool:
        """Copy one listed image and write its mask; False if it is left out (reported)."""
        item = f"image {file_name!r}"
        source = self._source(file_name, item, len(annotations))
        if source is None:
            return False
        try:
            photo = open_image(source, upright=False)
        except UnreadableImageError as e:
            self.report.problem(item, "unreadable_image", f"cannot read it ({e.reason}): left out")
            return False
        frame = self._frame(entry, photo, item)
        if frame is None:
            return False
        height, width, orientation = frame
        try:
            mask = self._mask(annotations, height, width, file_name)
        except coco_masks.BadSegmentation as e:
            self.report.problem(item, "bad_segmentation", f"{e}: the image is left out")
            return False
        image = Image.fromarray(mask, mode="P")
        if orientation != 1:  # drawn on the stored pixels: turn it as the photo is shown
            image = turn_like(image, orientation)
        self._write(source, file_name, image)
        self.report.count("background_only" if not annotations else "annotated")
        return True

    def _source(self, file_name: str, item: str, n_annotations: int) -> Path | None:
        source = self.images_dir / file_name
        parts = Path(file_name).parts
        if Path(file_name).is_absolute() or ".." in parts or not parts:
            how = "an absolute path" if Path(file_name).is_absolute() else "a path"
            self.report.problem(
                item,
                "outside_images",
                f"its file_name is {how} outside {self.images_dir}, the images folder: left out "
                "(set data.coco.images to the folder that holds it)",
            )
            return None
        if source.is_file() and not source.resolve().is_relative_to(self.images_dir.resolve()):
            self.report.problem(  # a link out of the folder would copy any file of the machine
                item, "outside_images", f"a link to a file outside {self.images_dir}: left out"
            )
            return None
        if not source.is_file():
            self.report.problem(
                item,
                "missing_image",
                f"not found in {self.images_dir}: it and its {n_annotations} annotation(s) are "
                "left out",
            )
            return None
        if not is_image_file(source):
            self.report.problem(item, "not_an_image", "not a supported image file: left out")
            return None
        return source

    def _frame(self, entry: dict, photo: Image.Image, item: str) -> tuple[int, int, int] | None:
        """(height, width, orientation) to draw at: the JSON's size, which must be the photo's
        as shown (orientation 1: no turn) or as stored (turned afterwards like the photo).
        When both are the same size, ``data.coco.exif`` says which, and the report says so."""
        shown, stored = shown_size(photo), photo.size
        for key in ("width", "height"):
            value = entry.get(key)
            if key in entry and not (_integer(value) and value > 0):
                self.report.problem(
                    item, "bad_field", f"{key} must be a positive integer, got {value!r}: left out"
                )
                return None
        width, height = entry.get("width", shown[0]), entry.get("height", shown[1])
        orientation = exif_orientation(photo)
        if (width, height) == shown == stored and orientation != 1:
            return self._undecided(item, height, width, orientation)
        if (width, height) == shown:
            return height, width, 1
        if (width, height) == stored:
            self.report.count("drawn_as_stored")
            return height, width, orientation
        also = f" ({stored[0]}x{stored[1]} as stored)" if stored != shown else ""
        self.report.problem(
            item,
            "size_mismatch",
            f"annotated at {width}x{height} (width x height in {self.path.name}), but the image "
            f"is {shown[0]}x{shown[1]} as shown{also}: left out",
        )
        return None

    def _undecided(
        self, item: str, height: int, width: int, orientation: int
    ) -> tuple[int, int, int]:
        """An EXIF-turned photo of one size shown and stored: the JSON's size cannot tell which
        pixels were annotated, so ``data.coco.exif`` decides, and the report says so."""
        assumed = self.data.coco.exif
        other = "stored" if assumed == "shown" else "shown"
        self.report.problem(
            item,
            "exif_undecided",
            f"EXIF orientation {orientation} turns it, and it is {width}x{height} both as shown "
            f"and as stored, so its size cannot tell which its annotations were drawn on: taken "
            f"as drawn on the photo as {assumed} (data.coco.exif: {assumed}); if its mask comes "
            f"out turned or mirrored, set data.coco.exif: {other}",
        )
        if assumed == "shown":
            return height, width, 1
        self.report.count("drawn_as_stored")
        return height, width, orientation

    def _value(self, entry: dict, name: str) -> int:
        """The mask value of an annotation: its class, or the crowd or extra-category value."""
        category_id = entry["category_id"]
        if category_id not in self.classes:
            raise coco_masks.BadSegmentation(
                f"{name}: category_id {category_id!r} is no category of {self.path.name}"
            )
        index = self.classes[category_id]
        ignore = self.data.ignore_index
        if index is None:  # not in data.classes: data.coco.extra_categories says what it is
            return 0 if self.data.coco.extra_categories == "background" else int(ignore or 0)
        if entry.get("iscrowd", 0) == 1 and ignore is not None:
            return ignore
        return index

    def _mask(
        self, annotations: list[tuple[str, dict]], height: int, width: int, file_name: str
    ) -> np.ndarray:
        """The HxW class-index mask of an image's annotations (counted once all are drawn).

        Raises:
            BadSegmentation: an annotation that cannot be drawn, naming it.
        """
        shapes = []
        drawn: Counter[str] = Counter()
        for order, (name, entry) in enumerate(annotations):
            where = f"{name} of image {file_name!r}"
            problem = annotation_problem(entry)
            if problem is not None:
                raise coco_masks.BadSegmentation(f"{name}: {problem}")
            for unused in field_problems(entry):
                self.report.problem(where, "bad_field", unused)
            value = self._value(entry, name)
            warnings: list[str] = []
            try:
                rle = coco_masks.to_rle(entry["segmentation"], height, width, warnings)
            except coco_masks.BadSegmentation as e:
                raise coco_masks.BadSegmentation(f"{name}: {e}") from None
            for warning in warnings:
                self.report.problem(where, "short_polygon", warning)
            shape = coco_masks.shape(rle, value, order) if rle is not None else None
            if shape is not None and shape.area == 0:
                self.report.problem(
                    where,
                    "draws_nothing",
                    "its segmentation covers no pixel centre (thinner than a pixel?): nothing "
                    "drawn",
                )
            elif shape is not None:
                shapes.append(shape)
                drawn["crowd_regions" if entry.get("iscrowd", 0) == 1 else "instances"] += 1
        mask = coco_masks.draw(shapes, height, width)
        for key, n in drawn.items():
            self.report.count(key, n)
        return mask

    def _write(self, source: Path, file_name: str, mask: Image.Image) -> None:
        stem = stem_of(source, self.images_dir)
        if stem in self.stems:
            raise SegpipeError(
                f"{self.path}: images {self.stems[stem]!r} and {file_name!r} share the stem "
                f"{stem!r}, and so the mask masks/{stem}.png; rename one"
            )
        self.stems[stem] = file_name
        image = self.dest / "images" / Path(file_name)
        image.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, image)
        target = self.dest / "masks" / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        mask.putpalette(self.palette)
        mask.save(target)


def convert(root: Path, dest: Path, data: DataConfig, what: str = "data.path") -> SourceReport:
    """Write ``dest/images`` and ``dest/masks`` from the COCO export in ``root``.

    Returns:
        What was converted and every problem, for ``source.json``.

    Raises:
        SegpipeError: the file is not valid COCO, its categories do not fit ``data.classes``,
            two images share a stem, or no image could be converted.
    """
    path = find_annotation_file(root, data, what)
    lists = load_json(path)
    report = SourceReport("coco", path.as_posix())
    report.counts = dict.fromkeys(COUNTS, 0)
    images = _unique_ids(lists["images"], "images", path)
    categories = _unique_ids(lists["categories"], "categories", path)
    file_names = {iid: _file_name(e, f"image {iid!r}", path) for iid, e in images.items()}
    by_image, uses = _annotations_by_image(lists["annotations"], images, path, report)
    classes = class_indices(categories, uses, data, path)
    images_dir = find_images_dir(root, path, list(file_names.values()), data)
    file_names = {iid: inside_name(images_dir, name) for iid, name in file_names.items()}
    conversion = _Conversion(path, images_dir, classes, data, dest, report)
    written = sum(
        conversion.image(file_names[iid], entry, by_image.get(iid, []))
        for iid, entry in progress(images.items(), "convert COCO", unit="image")
    )
    _report_unlisted(images_dir, set(file_names.values()), path, report)
    report.counts.update(
        images_listed=len(images), annotations=len(lists["annotations"]), images_written=written
    )
    if not written:
        first = report.problems[0] if report.problems else None
        example = f"; the first: {first.item}: {first.reason}" if first else ""
        raise SegpipeError(f"{path}: no image could be converted{example}")
    log.info(
        "%s: %d of %d images converted (%d instances, %d crowd region(s); %d without annotations, "
        "all background); %d problem(s), each named in the split report",
        path,
        written,
        len(images),
        report.counts.get("instances", 0),
        report.counts.get("crowd_regions", 0),
        report.counts.get("background_only", 0),
        len(report.problems),
    )
    return report


def _report_unlisted(images_dir: Path, listed: set[str], path: Path, report: SourceReport) -> None:
    """Report the image files of ``images_dir`` that the JSON does not list."""
    listed = {Path(name).as_posix() for name in listed}
    for file in scan_folder(images_dir).images.values():
        name = file.relative_to(images_dir).as_posix()
        if name not in listed:
            report.problem(
                f"file {name!r}",
                "unlisted_image",
                f"in {images_dir} but not listed in {path.name}: not used",
            )
