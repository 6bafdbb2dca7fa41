"""COCO segmentations drawn into one class-index mask per image, by pycocotools.

pycocotools, the reference implementation, rasterises polygons and RLE (compressed or not);
it is imported here only, when the first COCO mask is drawn. A pixel belongs to a polygon when
its centre lies inside it (pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``).

The rules, the same for every image:

- **Overlaps**: instances are drawn from the largest to the smallest (by their pixels), so a
  smaller instance lies over a larger one it overlaps; instances of equal size are drawn in file
  order (the later one on top).
- **Crowd regions** (``iscrowd: 1``) of a class in ``data.classes`` are ``data.ignore_index``
  when it is set, else their class; they take part in the overlap rule like any instance.

Checks, each a :class:`BadSegmentation` naming what is wrong (the image is then left out) or a
warning (a polygon of fewer than 3 points covers no pixel and is dropped).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from segpipe.errors import SegpipeError

MAX_COORDINATE = 1e6
"""Polygon coordinates beyond this are refused: pycocotools would allocate memory in proportion
to them (a corrupt file with ``1e300`` would exhaust it)."""


class BadSegmentation(Exception):
    """A segmentation that cannot be drawn at its image's size; ``str()`` says why."""


@dataclasses.dataclass(frozen=True)
class Shape:
    """One annotation to draw: its RLE at the image's size, pixel count and mask value."""

    rle: dict[str, Any]
    area: int
    value: int
    order: int


def _mask_api() -> Any:
    try:
        from pycocotools import mask as mask_api
    except ImportError:  # installed by requirements.txt; a bare `pip install segpipe` lacks it
        raise SegpipeError(
            "data.format: coco needs pycocotools; install it with `pip install -r "
            "requirements.txt` (or `pip install pycocotools`)"
        ) from None
    return mask_api


def _polygons(segmentation: list, warnings: list[str]) -> list[list[float]]:
    """The drawable polygons: flat ``[x1, y1, x2, y2, ...]`` lists of 3 or more points."""
    kept = []
    for i, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon
        ):
            raise BadSegmentation(f"polygon {i} is not a list of numbers")
        if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in polygon):
            raise BadSegmentation(f"polygon {i} has a coordinate that is not finite or far out")
        if len(polygon) % 2:
            raise BadSegmentation(f"polygon {i} has an odd number of coordinates ({len(polygon)})")
        if len(polygon) < 6:
            warnings.append(
                f"polygon {i} has {len(polygon) // 2} point(s), a polygon needs at least 3: "
                "it covers no pixel and is left out"
            )
            continue
        kept.append([float(v) for v in polygon])
    return kept


def _string_total(counts: str) -> int:
    """The pixels a compressed RLE string covers (its run lengths added up), decoded as
    pycocotools' ``rleFrString`` does: a string whose runs do not add up to the image would
    make pycocotools write past its mask."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise BadSegmentation("compressed RLE counts end in the middle of a run")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise BadSegmentation(f"compressed RLE counts hold {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise BadSegmentation("compressed RLE counts hold a negative run")
        runs.append(x)
    return sum(runs)


def _rle_object(segmentation: dict, height: int, width: int) -> dict[str, Any]:
    """An RLE object (``{"size": [h, w], "counts": ...}``) checked against the image's size and
    given as pycocotools' compressed form."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise BadSegmentation(f"RLE size must be [height, width], got {size!r}")
    if size != [height, width]:
        raise BadSegmentation(
            f"RLE size {size[1]}x{size[0]} differs from the image's {width}x{height} "
            "(width x height)"
        )
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise BadSegmentation("uncompressed RLE counts must be whole numbers >= 0")
        total = sum(counts)
    elif isinstance(counts, str):
        total = _string_total(counts)
    else:
        raise BadSegmentation(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    if total != height * width:
        raise BadSegmentation(
            f"RLE counts cover {total} pixels, the image has {height}x{width} = {height * width}"
        )
    if isinstance(counts, list):
        return _mask_api().frPyObjects(segmentation, height, width)
    return {"size": size, "counts": counts.encode("ascii")}


def to_rle(segmentation: Any, height: int, width: int, warnings: list[str]) -> dict | None:
    """A COCO ``segmentation`` (polygons, or RLE compressed or not) as one compressed RLE at the
    image's size; None when nothing is left to draw (only degenerate polygons, noted in
    ``warnings``).

    Raises:
        BadSegmentation: it cannot be drawn (wrong size, corrupt counts, not numbers).
    """
    if isinstance(segmentation, dict):
        return _rle_object(segmentation, height, width)
    if not isinstance(segmentation, list):
        raise BadSegmentation(
            "segmentation must be polygons (a list) or an RLE object, got "
            f"{type(segmentation).__name__}"
        )
    polygons = _polygons(segmentation, warnings)
    if not polygons:
        return None
    api = _mask_api()
    return api.merge(api.frPyObjects(polygons, height, width))


def shape(rle: dict[str, Any], value: int, order: int) -> Shape:
    """An RLE to draw with ``value``, ``order`` its place in the file."""
    return Shape(rle, int(_mask_api().area(rle)), value, order)


def draw(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """The HxW uint8 mask of ``shapes``: 0 (background) where none lies, else the value of the
    smallest one there (see the overlap rule in the module's docstring)."""
    api = _mask_api()
    mask = np.zeros((height, width), dtype=np.uint8)
    for s in sorted(shapes, key=lambda s: (-s.area, s.order)):
        mask[api.decode(s.rle).astype(bool)] = s.value
    return mask
