"""A seeded generator of image/mask pairs that behaves like a small real task.

Foreground objects are filled shapes (ellipses, rotated boxes, triangles, blobs) of varied size,
colour and texture. The background is cluttered on purpose: colour gradients, soft blotches,
thin lines, outlined rings and sensor noise, so the model must learn shape and edges rather
than "anything that is not flat". Some images hold no object at all.

With two classes the mask is 0/255 (any shape is foreground). With N > 2 classes (at most 5)
it holds class indices: class k (1..N-1) is the k-th shape kind (ellipse, box, triangle, blob),
so the model must tell shapes apart, not only find them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segpipe.config import SyntheticConfig
from segpipe.errors import SegpipeError
from segpipe.files import atomic_save_image

log = logging.getLogger(__name__)


SHAPE_KINDS = ("ellipse", "box", "triangle", "blob")


def generate(out_dir: Path, cfg: SyntheticConfig, seed: int, num_classes: int = 2) -> int:
    """Write ``cfg.n_images`` pairs to ``out_dir/images/*.png`` and ``out_dir/masks/*.png``.

    Masks are 8-bit PNGs: 0 = background and 255 = foreground for two classes, class indices
    for more. The output depends only on ``cfg``, ``seed`` and ``num_classes``: each image has
    its own generator seeded from ``(seed, index)``.

    Returns:
        The number of pairs written.
    """
    images, masks = out_dir / "images", out_dir / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(cfg.n_images):
        rng = np.random.default_rng([seed, i])
        image, mask = make_pair(rng, cfg, num_classes)
        atomic_save_image(Image.fromarray(image), images / f"syn_{i:05d}.png")
        atomic_save_image(Image.fromarray(mask), masks / f"syn_{i:05d}.png")
    log.info("wrote %d synthetic pairs to %s", cfg.n_images, out_dir)
    return cfg.n_images


def make_pair(
    rng: np.random.Generator, cfg: SyntheticConfig, num_classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """One image (HxWx3 uint8) and its mask (HxW uint8: 0/255, or class indices)."""
    if not 2 <= num_classes <= len(SHAPE_KINDS) + 1:
        raise SegpipeError(
            f"data.classes: synthetic data has at most {len(SHAPE_KINDS)} shape classes "
            f"(+ background), got {num_classes} classes"
        )
    kinds = len(SHAPE_KINDS) if num_classes == 2 else num_classes - 1
    h, w = (int(v) for v in rng.integers(cfg.min_size, cfg.max_size + 1, size=2))
    image = _background(rng, h, w)
    mask = np.zeros((h, w), dtype=np.uint8)
    n_objects = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, 5))
    for _ in range(n_objects):
        shape, kind = _shape_mask(rng, h, w, kinds)
        texture = _texture(rng, h, w, avoid=image[shape].mean(axis=0) if shape.any() else None)
        image = np.where(shape[..., None], texture, image)
        mask[shape] = 255 if num_classes == 2 else kind + 1
    noise = rng.normal(0.0, rng.uniform(4.0, 14.0), size=image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image, mask


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # A linear gradient between two colours, in a random direction.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0
    c0, c1 = _random_colour(rng), _random_colour(rng)
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    # Soft blotches: large, blurred, low-contrast discs (clutter with no sharp edges).
    blotches = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(blotches)
    for _ in range(int(rng.integers(2, 6))):
        r = rng.uniform(0.1, 0.4) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.integers(60, 160)))
    soft = np.asarray(blotches.filter(ImageFilter.GaussianBlur(min(h, w) / 10)), np.float32) / 255
    image = image * (1 - soft[..., None]) + _random_colour(rng) * soft[..., None]
    # Sharp but thin clutter: lines and rings, in colours that also occur on objects.
    clutter = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(3, 10))):
        colour = tuple(int(c) for c in _random_colour(rng))
        if rng.random() < 0.6:
            x0, y0, x1, y1 = (
                rng.uniform(0, w),
                rng.uniform(0, h),
                rng.uniform(0, w),
                rng.uniform(0, h),
            )
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(0.05, 0.2) * min(h, w)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=1)
    return np.asarray(clutter, dtype=np.float32)


def _shape_mask(rng: np.random.Generator, h: int, w: int, kinds: int) -> tuple[np.ndarray, int]:
    """A filled shape of one of the first ``kinds`` of SHAPE_KINDS, and its kind."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    size = rng.uniform(0.08, 0.35) * min(h, w)
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    kind = int(rng.integers(0, kinds))
    if kind == 0:  # ellipse
        rx, ry = size * rng.uniform(0.5, 1.0), size * rng.uniform(0.5, 1.0)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        if kind == 1:  # rotated box
            sx, sy = size * rng.uniform(0.4, 1.0), size * rng.uniform(0.4, 1.0)
            corners = np.array([[-sx, -sy], [sx, -sy], [sx, sy], [-sx, sy]])
        elif kind == 2:  # triangle
            angles = np.sort(rng.uniform(0, 2 * np.pi, 3))
            corners = size * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        else:  # irregular blob: a star-shaped polygon with random radii
            angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            radii = size * rng.uniform(0.5, 1.0, size=12)
            corners = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        theta = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = corners @ rot.T + [cx, cy]
        draw.polygon([tuple(p) for p in points], fill=255)
    return np.asarray(canvas) > 127, kind


def _texture(rng: np.random.Generator, h: int, w: int, avoid: np.ndarray | None) -> np.ndarray:
    # Objects are visible, as in a real annotated task: their colour differs from the
    # background they cover (in Euclidean RGB distance), though clutter may share it.
    base = _random_colour(rng)
    for _ in range(20):
        if avoid is None or np.linalg.norm(base - avoid) > 90:
            break
        base = _random_colour(rng)
    kind = rng.integers(0, 3)
    if kind == 0:  # flat colour with a soft shading
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = 0.8 + 0.2 * np.sin(xx / rng.uniform(8, 30) + yy / rng.uniform(8, 30))
        return base * shade[..., None]
    if kind == 1:  # stripes in a second colour
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period) > 0
        return np.where(stripes[..., None], base, _random_colour(rng))
    # speckled: coarse noise around the base colour
    return np.clip(base + rng.normal(0, 35, size=(h, w, 3)), 0, 255)
