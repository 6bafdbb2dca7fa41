"""The test set's fingerprint: which images a run was scored on, down to their bytes.

The evaluate stage writes it beside the metrics (``metrics/test_set.json``); ``segpipe compare``
refuses two runs whose fingerprints differ, so a re-split or relabelled test set cannot pass for
a better model. Layout::

    {"n_images": 2, "sha256": "<of the lines below>",
     "images": {"0001": {"image": "<sha256 of the image file>", "mask": "<of the mask file>"},
                "0002": {...}}}

The stems are sorted; the overall hash is the SHA-256 of one ``stem image mask`` line per stem.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from segpipe.files import write_json


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def overall_sha256(images: Mapping[str, Mapping[str, str]]) -> str:
    """The one hash of a whole test set, from its stems and their files' hashes."""
    lines = "".join(f"{s} {images[s]['image']} {images[s]['mask']}\n" for s in sorted(images))
    return hashlib.sha256(lines.encode()).hexdigest()


def fingerprint(test: pd.DataFrame) -> dict:
    """The fingerprint of a split table's images (columns ``stem``, ``image``, ``mask``)."""
    images = {
        str(row["stem"]): {
            "image": file_sha256(Path(row["image"])),
            "mask": file_sha256(Path(row["mask"])),
        }
        for _, row in test.sort_values("stem", kind="stable").iterrows()
    }
    return {"n_images": len(images), "sha256": overall_sha256(images), "images": images}


def write(path: Path, test: pd.DataFrame) -> dict:
    """Write the fingerprint of ``test`` to ``path`` (JSON); returns it."""
    record = fingerprint(test)
    write_json(path, record)
    return record


@dataclasses.dataclass(frozen=True)
class Difference:
    """How a test set differs from another, counted in images (by stem)."""

    added: int
    removed: int
    changed: int

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        parts = {"added": self.added, "removed": self.removed, "changed": self.changed}
        return ", ".join(f"{n} {what}" for what, n in parts.items() if n) or "no difference"


def difference(base: Mapping, other: Mapping) -> Difference:
    """The images of ``other`` added to, removed from and changed (image or mask bytes) from
    those of ``base``, two fingerprints as :func:`fingerprint` makes them."""
    a, b = base["images"], other["images"]
    changed = sum(a[stem] != b[stem] for stem in a.keys() & b.keys())
    return Difference(
        added=len(b.keys() - a.keys()), removed=len(a.keys() - b.keys()), changed=changed
    )
