"""What the download stage tells the split stage about an annotation export (COCO, VOC).

The download stage writes ``source.json`` beside ``images/`` and ``masks/``: the format, a few
counts, every item it left out or found wrong (``problems``, each naming the annotation, image
or file), and for VOC's ``ImageSets/Segmentation`` lists, the fixed subsets. The split stage
reads it back, carries it into its report (so the user sees each problem by name) and, with
subsets, splits by them instead of at random.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from segpipe.errors import SegpipeError

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"
"""In the download stage's output folder, next to ``images/`` and ``masks/``."""
MAX_WARNINGS = 20
"""Problems logged one by one; the rest are only counted (source.json lists all)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """An item of the export left out or changed: ``item`` names it (``annotation 17``,
    ``image 'a.jpg'``), ``kind`` is a stable keyword, ``reason`` a sentence."""

    item: str
    kind: str
    reason: str


@dataclasses.dataclass
class SourceReport:
    """The download stage's account of an export (see the module's docstring).

    ``subsets`` maps ``train``, ``val`` (and ``test`` if listed) to the stems they list.
    """

    format: str
    source: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    subsets: dict[str, list[str]] | None = None

    def problem(self, item: str, kind: str, reason: str) -> None:
        """Record a problem and warn (the first :data:`MAX_WARNINGS` times)."""
        self.problems.append(Problem(item, kind, reason))
        if len(self.problems) <= MAX_WARNINGS:
            log.warning("%s: %s", item, reason)
        elif len(self.problems) == MAX_WARNINGS + 1:
            log.warning("more problems: not logged one by one (%s lists all)", SOURCE_FILE)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "counts": dict(self.counts),
            "problem_count": len(self.problems),
            "problems_by_kind": dict(sorted(Counter(p.kind for p in self.problems).items())),
            "problems": [dataclasses.asdict(p) for p in self.problems],
            "subsets": self.subsets,
        }

    def write(self, folder: Path) -> None:
        """Write ``source.json`` into ``folder`` (the download stage's staging folder)."""
        (Path(folder) / SOURCE_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def read_source_report(folder: Path) -> SourceReport | None:
    """The ``source.json`` the download stage wrote into ``folder``; None when there is none
    (a folder of images and masks).

    Raises:
        SegpipeError: the file is not one the download stage wrote.
    """
    path = Path(folder) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        subsets = raw["subsets"]
        return SourceReport(
            format=str(raw["format"]),
            source=str(raw["source"]),
            counts={str(k): int(v) for k, v in raw["counts"].items()},
            problems=[Problem(p["item"], p["kind"], p["reason"]) for p in raw["problems"]],
            subsets=(
                None
                if subsets is None
                else {str(k): [str(s) for s in v] for k, v in subsets.items()}
            ),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SegpipeError(
            f"{path}: not a source report written by the download stage; rerun it"
        ) from None
