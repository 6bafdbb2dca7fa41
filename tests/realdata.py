"""Tiny datasets that look like real ones: awkward file names, EXIF-rotated phone photos.

Each photo is a grey, lightly noisy background with one red disc off its centre; the mask is
that disc, drawn on the photo as viewers show it. A model learns the disc in one or two
epochs, and a mask that is misaligned with its photo (rotated, say) scores far lower.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir_seg"
"""The shared Kvasir-SEG copy (1000 polyp photos up to 1920x1072, 0/255 masks), when present
next to the repository; tests that need it skip without it and never copy it in."""

AWKWARD_STEMS = (
    "0003",
    "007",
    "000000397133",
    "1e5",
    "NA",
    "null",
    "nan",
    "True",
    "-1",
    "two words",
    "Ünïcödé ÆØÅ",
    "αβγ",
)
"""Names that pandas, YAML or a careless ``int()`` would change, plus spaces and non-ASCII."""

ORIENTATION = 0x0112
TURN_90_CW = 6
"""EXIF Orientation 6: the stored pixels must be turned 90 degrees clockwise to be shown."""


def photo_and_mask(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An upright RGB photo (HxWx3 uint8) with a red disc in its upper-left part, and the
    disc's 0/255 mask (HxW uint8)."""
    rng = np.random.default_rng(seed)
    photo = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    radius = min(height, width) * rng.uniform(0.18, 0.24)
    cy = height * rng.uniform(0.25, 0.35)
    cx = width * rng.uniform(0.25, 0.35)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    photo[disc] = (220, 30, 30)
    return photo, (disc * 255).astype(np.uint8)


def save_rotated_photo(photo: np.ndarray, path: Path) -> None:
    """Save an upright photo as a phone does: pixels stored turned 90 degrees
    counter-clockwise, with EXIF Orientation 6 telling viewers to turn them back."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(photo, k=1)))
    exif = Image.Exif()
    exif[ORIENTATION] = TURN_90_CW
    stored.save(path, exif=exif, quality=95)


def write_folder_dataset(
    root: Path,
    stems: list[str],
    size: tuple[int, int] = (48, 64),
    rotated: tuple[str, ...] = (),
    first_seed: int = 0,
) -> Path:
    """``root/images/<stem>.jpg`` and ``root/masks/<stem>.png`` for every stem; the
    ``rotated`` stems are stored sideways with an EXIF orientation tag (the first non-square,
    the others square), their masks drawn upright. Photo ``i`` is drawn with seed
    ``first_seed + i``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        height, width = size
        if stem in rotated and stem != rotated[0]:
            height = width = max(size)
        photo, mask = photo_and_mask(height, width, seed=first_seed + i)
        image_path = root / "images" / f"{stem}.jpg"
        if stem in rotated:
            save_rotated_photo(photo, image_path)
        else:
            Image.fromarray(photo).save(image_path, quality=95)
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice of two masks (non-zero = foreground)."""
    p, t = pred > 0, truth > 0
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def kvasir_sample(root: Path, n: int) -> Path:
    """``root/images`` and ``root/masks`` with ``n`` of the :data:`KVASIR` photo/mask pairs,
    spread over its sorted names (so over its range of sizes), copied into a test's own
    temporary folder. Returns ``root``."""
    names = sorted(p.name for p in (KVASIR / "images").iterdir())
    for name in names[:: len(names) // n][:n]:
        stem = Path(name).stem
        for kind, file in (("images", name), ("masks", f"{stem}.png")):
            (root / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(KVASIR / kind / file, root / kind / file)
    return root
