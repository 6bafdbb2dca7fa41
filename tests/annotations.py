"""Tiny annotation exports written by the tests, and independent drawings of what they hold.

COCO files are built with :class:`CocoFile`; their expected masks are drawn here without
pycocotools: polygons with PIL's ``ImageDraw``, RLE encoded and decoded by hand (COCO's
column-major runs and its compressed string form, as ``maskApi.c`` defines them). Pascal VOC
trees are written by :func:`write_voc_tree`, with palette PNGs and 255 on object borders.

Run as ``python -m tests.annotations [N_IMAGES] [INSTANCES]`` to time the conversion of a COCO
file of N_IMAGES x INSTANCES instances (default 200 x 6: 1200).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segpipe.data.colours import palette

SCALE = 8
"""Polygons are drawn at 8x and sampled at the pixel centres: a pixel belongs to a polygon
when its centre lies inside (COCO's convention: pixel x covers [x, x + 1)). pycocotools traces
edges on a 1/5-pixel grid, so it may differ from this for centres closer than 1/5 pixel to an
edge (measured on 300 random convex polygons: every differing pixel was); the shapes of these
tests keep every centre farther (:func:`edge_margin`)."""


def polygon_mask(height: int, width: int, xy: list[float]) -> np.ndarray:
    """HxW bool: the pixels whose centre lies inside the polygon ``[x1, y1, x2, y2, ...]``."""
    big = Image.new("1", (width * SCALE, height * SCALE), 0)
    points = [(xy[i] * SCALE, xy[i + 1] * SCALE) for i in range(0, len(xy), 2)]
    ImageDraw.Draw(big).polygon(points, fill=1)
    return np.asarray(big)[SCALE // 2 :: SCALE, SCALE // 2 :: SCALE].copy()


def edge_margin(height: int, width: int, xy: list[float]) -> float:
    """The smallest distance from a pixel centre of the image to an edge of the polygon: where
    it is at least 1/5 pixel, pycocotools and :func:`polygon_mask` draw the same pixels."""
    yy, xx = np.mgrid[:height, :width] + 0.5
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    corners = np.asarray(xy, dtype=float).reshape(-1, 2)
    nearest = np.inf
    for a, b in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        t = np.clip(((points - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-12), 0, 1)
        distance = np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1)
        nearest = min(nearest, float(distance.min()))
    return nearest


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a bool mask: run lengths in column-major order,
    starting with a run of 0s (maybe empty)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def decode_counts(counts: list[int], height: int, width: int) -> np.ndarray:
    """The HxW bool mask of uncompressed RLE ``counts``."""
    flat = np.zeros(height * width, dtype=bool)
    at, value = 0, False
    for run in counts:
        flat[at : at + run] = value
        at, value = at + run, not value
    assert at == height * width, (at, height, width)
    return flat.reshape((width, height)).T


def rle_string(counts: list[int]) -> str:
    """COCO's compressed counts string (``rleToString``): each count, minus the one two
    before it from the third on, in 5-bit groups, low first, 0x20 = more follow, + 48."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_counts(text: str) -> list[int]:
    """The counts of a compressed string (``rleFrString``): :func:`rle_string` undone."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A rectangle as a COCO polygon: it covers pixels x0..x1-1, y0..y1-1 (integer corners)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def regular_polygon(cx: float, cy: float, r: float, n: int = 24) -> list[float]:
    """An n-gon around (cx, cy): a disc as annotation tools trace one."""
    angles = [2 * math.pi * (i + 0.25) / n for i in range(n)]
    return [v for a in angles for v in (cx + r * math.cos(a), cy + r * math.sin(a))]


@dataclasses.dataclass
class CocoFile:
    """A COCO annotation file under construction (``images``, ``annotations``, ``categories``)."""

    images: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    annotations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    categories: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def category(self, category_id: int, name: str) -> int:
        self.categories.append({"id": category_id, "name": name, "supercategory": "thing"})
        return category_id

    def image(self, file_name: str, height: int, width: int) -> int:
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        return image_id

    def annotate(
        self, image_id: int, category_id: int, segmentation: Any, *, iscrowd: int = 0
    ) -> int:
        annotation_id = len(self.annotations) + 1
        self.annotations.append(
            {
                "id": annotation_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation,
                "iscrowd": iscrowd,
                "area": 0,
                "bbox": [0, 0, 0, 0],
            }
        )
        return annotation_id

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"images": self.images, "annotations": self.annotations}
        path.write_text(json.dumps({**data, "categories": self.categories}))
        return path


def save_photo(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A noisy grey RGB photo (PNG or JPEG by suffix); returns its pixels."""
    photo = np.random.default_rng(seed).integers(90, 140, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(path)
    return photo


def shapes_photo(height: int, width: int, seed: int) -> tuple[np.ndarray, list[float], np.ndarray]:
    """A photo with a red disc (a 24-gon, returned as its polygon) and a blue square (returned
    as its bool mask), at seeded places that do not overlap."""
    rng = np.random.default_rng(seed)
    photo = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    r = min(height, width) * rng.uniform(0.15, 0.2)
    disc = regular_polygon(width * rng.uniform(0.25, 0.35), height * rng.uniform(0.3, 0.7), r)
    side = int(min(height, width) * rng.uniform(0.2, 0.3))
    x0, y0 = int(width * 0.6), int(height * rng.uniform(0.2, 0.5))
    square = np.zeros((height, width), dtype=bool)
    square[y0 : y0 + side, x0 : x0 + side] = True
    photo[polygon_mask(height, width, disc)] = (220, 30, 30)
    photo[square] = (30, 30, 220)
    return photo, disc, square


def write_coco_export(
    root: Path, n: int, size: tuple[int, int] = (48, 64), *, crowd_every: int = 0
) -> CocoFile:
    """``root/images/<i>.png`` photos of :func:`shapes_photo` and ``root/annotations.json``:
    the disc as a polygon (class ``disc``), the square as compressed RLE (``square``); the last
    image has no annotation (all background); with ``crowd_every``, every so many squares are
    crowd regions (uncompressed RLE)."""
    height, width = size
    coco = CocoFile()
    disc_id, square_id = coco.category(1, "disc"), coco.category(2, "square")
    for i in range(n):
        photo, disc, square = shapes_photo(height, width, seed=i)
        name = f"{i:04d}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        if i == n - 1:  # no annotation: an all-background pair
            photo = np.random.default_rng(i).integers(90, 140, photo.shape, dtype=np.uint8)
            Image.fromarray(photo).save(root / "images" / name)
            coco.image(name, height, width)
            continue
        Image.fromarray(photo).save(root / "images" / name)
        image_id = coco.image(name, height, width)
        coco.annotate(image_id, disc_id, [disc])
        counts = rle_counts(square)
        if crowd_every and i % crowd_every == 0:
            coco.annotate(
                image_id, square_id, {"size": [height, width], "counts": counts}, iscrowd=1
            )
        else:
            coco.annotate(
                image_id, square_id, {"size": [height, width], "counts": rle_string(counts)}
            )
    coco.write(root / "annotations.json")
    return coco


def voc_mask(height: int, width: int, disc: list[float], square: np.ndarray) -> np.ndarray:
    """A VOC class-index mask: disc 1, square 2, and a 1-pixel 255 border around each object."""
    labels = np.zeros((height, width), dtype=np.uint8)
    for value, inside in ((1, polygon_mask(height, width, disc)), (2, square)):
        grown = inside.copy()
        grown[1:] |= inside[:-1]
        grown[:-1] |= inside[1:]
        grown[:, 1:] |= inside[:, :-1]
        grown[:, :-1] |= inside[:, 1:]
        labels[grown & ~inside & (labels == 0)] = 255
        labels[inside] = value
    return labels


def save_palette_png(labels: np.ndarray, path: Path, num_classes: int = 21) -> None:
    """A VOC-style palette PNG: pixel values are the class indices."""
    image = Image.fromarray(labels, mode="P")
    image.putpalette(palette(num_classes).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_voc_tree(
    root: Path,
    n: int,
    size: tuple[int, int] = (48, 64),
    *,
    lists: dict[str, list[int]] | None = None,
    detection_only: int = 1,
) -> dict[str, np.ndarray]:
    """A VOC tree: ``root/JPEGImages/<stem>.jpg`` (n with masks, ``detection_only`` more
    without), ``root/SegmentationClass/<stem>.png`` (:func:`voc_mask`), and
    ``root/ImageSets/Segmentation/<name>.txt`` for each of ``lists`` (indices of the images).
    Returns the masks by stem."""
    height, width = size
    masks = {}
    for i in range(n + detection_only):
        stem = f"2007_{i:06d}"
        photo, disc, square = shapes_photo(height, width, seed=100 + i)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        if i < n:
            masks[stem] = voc_mask(height, width, disc, square)
            save_palette_png(masks[stem], root / "SegmentationClass" / f"{stem}.png")
    sets = root / "ImageSets" / "Segmentation"
    for name, indices in (lists or {}).items():
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{name}.txt").write_text("".join(f"2007_{i:06d}\n" for i in indices))
    return masks


def time_conversion(n_images: int = 200, instances: int = 6) -> dict[str, float]:
    """Build a COCO file of ``n_images`` 320x240 photos with ``instances`` annotations each
    (polygons, compressed and uncompressed RLE in turn, overlapping) and time the download
    stage's conversion of it."""
    from segpipe.config import load_params
    from segpipe.data import download

    from .helpers import REPO

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        coco = CocoFile()
        classes = [coco.category(k, f"class{k}") for k in (1, 2, 3)]
        rng = np.random.default_rng(0)
        for i in range(n_images):
            save_photo(root / "images" / f"{i:05d}.jpg", 240, 320, seed=i)
            image_id = coco.image(f"{i:05d}.jpg", 240, 320)
            for k in range(instances):
                cx, cy, r = rng.uniform(40, 280), rng.uniform(40, 200), rng.uniform(10, 40)
                polygon = regular_polygon(cx, cy, r, n=32)
                if k % 3 == 0:
                    segmentation: Any = [polygon]
                else:
                    counts = rle_counts(polygon_mask(240, 320, polygon))
                    counts_field: Any = rle_string(counts) if k % 3 == 1 else counts
                    segmentation = {"size": [240, 320], "counts": counts_field}
                coco.annotate(image_id, classes[k % 3], segmentation)
        coco.write(root / "annotations.json")
        params = load_params(REPO / "params.yaml")
        data = dataclasses.replace(
            params.data,
            source="folder",
            format="coco",
            path=str(root),
            classes=("background", "class1", "class2", "class3"),
        )
        start = time.perf_counter()
        download.run(data, params.seed, Path(tmp) / "raw")
        seconds = time.perf_counter() - start
    total = n_images * instances
    return {
        "images": n_images,
        "instances": total,
        "seconds": seconds,
        "per_1000": seconds * 1000 / total,
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(json.dumps(time_conversion(*args), indent=2))
