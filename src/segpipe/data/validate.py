"""Checks of every image/mask pair and the data-validation report of the split stage.

Skipped (with a warning): unpaired files, unreadable/truncated/empty files, masks whose size
differs from their image's. Fatal (:class:`SegpipeError`): masks that no one rule reads (see
:mod:`segpipe.data.masks`) and values that fit no class of ``data.classes``, since a wrong
declaration affects every file.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.constants import IGNORE
from segpipe.data.images import (
    UnreadableImageError,
    exif_orientation,
    is_high_bit_depth,
    make_upright,
    open_image,
)
from segpipe.data.masks import (
    MaskRule,
    MaskValues,
    colour_text,
    decide_rule,
    foreground_fraction,
    mask_values,
    open_mask,
    size_mismatch,
)

log = logging.getLogger(__name__)

MAX_WARNINGS = 20
"""Skipped files logged one by one; the rest are only counted (all are in report.json)."""
MD_SKIPPED = 50
"""Skipped files listed in report.md."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file left out of the splits: ``kind`` is a stable keyword, ``reason`` a sentence."""

    stem: str
    file: str
    kind: str
    reason: str


@dataclasses.dataclass(frozen=True)
class PairFacts:
    """What :func:`inspect_pair` learnt of one pair: why it is skipped (``skip``: the file, a
    :class:`Skipped` kind and reason), or the facts :meth:`DatasetCheck.record` gathers."""

    stem: str
    image_path: Path
    mask_path: Path
    skip: tuple[Path, str, str] | None = None
    values: MaskValues | None = None
    height: int = 0
    width: int = 0
    image_mode: str = ""
    mask_mode: str = ""
    turned: bool = False
    high_bit_depth: bool = False
    mask_tagged: bool = False


def inspect_pair(stem: str, image_path: Path, mask_path: Path, colours: bool) -> PairFacts:
    """Decode the mask of a pair (the image's header only) and gather what the check needs;
    touches no shared state, so pairs can be read on several threads."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    facts = functools.partial(PairFacts, stem, image_path, mask_path)
    try:
        image = open_image(image_path, upright=False)
    except UnreadableImageError as e:
        return facts(skip=(image_path, "unreadable_image", f"cannot read image ({e.reason})"))
    try:
        mask_image = open_mask(mask_path)
    except UnreadableImageError as e:
        return facts(skip=(mask_path, "unreadable_mask", f"cannot read mask ({e.reason})"))
    turned = make_upright(image)
    raw, colour = mask_values(mask_image, mask_path, colours=colours)
    width, height = image.size
    mismatch = size_mismatch(image_path, (height, width), raw.shape)
    if mismatch:
        hint = (
            "; the photo is shown turned by its EXIF orientation and the mask matches it as "
            "stored: draw masks on the photo as viewers show it"
            if turned and raw.shape == (width, height)
            else ""
        )
        return facts(skip=(mask_path, "size_mismatch", mismatch + hint))
    return facts(
        values=MaskValues.of(mask_path, raw, colour=colour, image=mask_image),
        height=height,
        width=width,
        image_mode=image.mode,
        mask_mode=mask_image.mode,
        turned=bool(turned),
        high_bit_depth=bool(is_high_bit_depth(image)),
        mask_tagged=exif_orientation(mask_image) != 1,
    )


class DatasetCheck:
    """Records the pairs :func:`inspect_pair` read, one at a time, and gathers the statistics
    of the valid ones; then :meth:`decide` chooses the one mask rule from the value histograms
    of all masks."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        mask_colours: tuple[tuple[int, ...], ...] | None = None,
        ignore_colour: tuple[int, ...] | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mask_colours = mask_colours
        self.ignore_colour = ignore_colour
        self.masks: list[MaskValues] = []  # one histogram per valid mask, in row order
        self.rule: MaskRule | None = None
        self._class_pixels = np.zeros(IGNORE + 1, dtype=np.int64)
        self.n_images = self.n_masks = 0
        self.skipped: list[Skipped] = []
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.fg: list[float] = []
        self.image_modes: Counter[str] = Counter()
        self.exif_turned = 0  # photos turned upright by their EXIF orientation
        self.range_scaled = 0  # >8-bit greyscale photos scaled by their range
        self.mask_orientation_tags = 0
        self.mask_modes: Counter[str] = Counter()

    def skip(self, stem: str, path: Path, kind: str, reason: str) -> None:
        """Record a skipped file and warn (the first :data:`MAX_WARNINGS` times)."""
        self.skipped.append(Skipped(stem, Path(path).as_posix(), kind, reason))
        if len(self.skipped) <= MAX_WARNINGS:
            log.warning("skipped %s: %s", path, reason)
        elif len(self.skipped) == MAX_WARNINGS + 1:
            log.warning("more files skipped: not logged one by one (report.json lists all)")

    def record(self, pair: PairFacts) -> dict[str, Any] | None:
        """A CSV row (without split and ``fg_fraction``, which need the mask rule: see
        :meth:`decide`) for a valid pair read by :func:`inspect_pair` (on any thread), or None
        if the pair is skipped; the mask's value histogram is kept. The pairs must be
        recorded in row order, on one thread."""
        if pair.skip is not None:
            self.skip(pair.stem, *pair.skip)
            return None
        self.masks.append(pair.values)
        self.heights.append(pair.height)
        self.widths.append(pair.width)
        self.image_modes[pair.image_mode] += 1
        self.mask_modes[pair.mask_mode] += 1
        self.exif_turned += pair.turned
        self.range_scaled += pair.high_bit_depth
        if pair.mask_tagged:
            self.mask_orientation_tags += 1
            log.warning(
                "%s: the mask has an EXIF orientation tag; it is read as stored (masks are "
                "taken as drawn on the photo as shown)",
                pair.mask_path,
            )
        return {
            "stem": pair.stem,
            "image": pair.image_path.as_posix(),
            "mask": pair.mask_path.as_posix(),
            "height": pair.height,
            "width": pair.width,
        }

    def decide(self, folder: Path) -> MaskRule:
        """The one mask rule for all valid masks (see :func:`~segpipe.data.masks.decide_rule`), and
        by it each mask's foreground share (``fg``, in row order) and the class pixels.

        Raises:
            SegpipeError: no rule reads every mask, or a value or colour fits no class.
        """
        rule = decide_rule(
            self.masks,
            self.num_classes,
            self.ignore_index,
            self.mask_colours,
            folder,
            ignore_colour=self.ignore_colour,
        )
        self.fg = []
        self._class_pixels[:] = 0
        for mask in self.masks:
            pixels = mask.class_pixels(rule)
            self.fg.append(foreground_fraction(pixels))
            self._class_pixels += pixels
        self.rule = rule
        return rule

    def mask_histogram(self) -> dict[str, int]:
        """Pixel count per raw mask value (``[r, g, b]`` for colours) over all valid masks,
        by ascending value."""
        counts: Counter[int] = Counter()
        for mask in self.masks:
            counts.update(dict(zip(mask.values.tolist(), mask.counts.tolist(), strict=True)))
        colour = self.rule is not None and self.rule.rule == "colours"
        return {colour_text(v) if colour else str(v): counts[v] for v in sorted(counts)}

    def report(
        self,
        raw_dir: Path,
        splits: dict[str, int],
        split_method: str,
        source: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The report as JSON-ready data (see :func:`render_markdown`); after :meth:`decide`.

        Args:
            split_method: how the splits were made, in words.
            source: the download stage's report of an annotation export (``source.json``),
                carried as it is.
        """
        if self.rule is None:
            raise RuntimeError("DatasetCheck.report() needs decide() first")
        fg = np.asarray(self.fg, dtype=float)

        def spread(values: list[int]) -> dict[str, float]:
            return {
                "min": int(min(values)),
                "median": float(np.median(values)),
                "max": int(max(values)),
            }

        return {
            "raw_dir": Path(raw_dir).as_posix(),
            "num_classes": self.num_classes,
            "files": {"images": self.n_images, "masks": self.n_masks},
            "valid_pairs": len(self.fg),
            "splits": dict(splits),
            "split_method": split_method,
            "image_size": {"height": spread(self.heights), "width": spread(self.widths)},
            "image_modes": dict(sorted(self.image_modes.items())),
            "exif_turned_images": self.exif_turned,
            "range_scaled_images": self.range_scaled,
            "masks_with_orientation_tag": self.mask_orientation_tags,
            "mask_modes": dict(sorted(self.mask_modes.items())),
            "mask_rule": self.rule.to_json(),
            "mask_values": self.mask_histogram(),
            "class_pixels": {str(c): int(self._class_pixels[c]) for c in range(self.num_classes)},
            "ignored_pixels": int(self._class_pixels[IGNORE]),
            "foreground_fraction": {
                "mean": round(float(fg.mean()), 6),
                "min": round(float(fg.min()), 6),
                "max": round(float(fg.max()), 6),
                "empty_masks": int((fg == 0).sum()),
            },
            "skipped_count": len(self.skipped),
            "skipped_by_kind": dict(sorted(Counter(s.kind for s in self.skipped).items())),
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "source": source,
        }


def render_markdown(report: dict) -> str:
    """A short human-readable version of the report."""
    h, w = report["image_size"]["height"], report["image_size"]["width"]
    fg = report["foreground_fraction"]
    splits = report["splits"]
    values = sorted(report["mask_values"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{v}: {c}" for v, c in values[:10])
    if len(values) > 10:
        shown += f", ... ({len(values)} distinct values, all in report.json)"
    modes = ", ".join(f"{m} {n}" for m, n in report["image_modes"].items())
    lines = [
        "# Data validation report",
        "",
        f"Dataset `{report['raw_dir']}`: {report['files']['images']} image files, "
        f"{report['files']['masks']} mask files, {report['num_classes']} classes.",
        "",
        "| | count |",
        "|---|---|",
        f"| valid pairs | {report['valid_pairs']} |",
        *(f"| {name} | {n} |" for name, n in splits.items()),
        f"| skipped files | {report['skipped_count']} |",
        "",
        f"- Split: {report['split_method']}.",
        f"- Image size (height x width): min {h['min']} x {w['min']}, "
        f"median {h['median']:g} x {w['median']:g}, max {h['max']} x {w['max']}.",
        f"- Image modes: {modes} (all are read as RGB).",
        f"- Photos turned upright by their EXIF orientation tag: {report['exif_turned_images']}"
        f"; greyscale photos of more than 8 bits scaled by their range to 0..255: "
        f"{report['range_scaled_images']}.",
        f"- Mask rule, the same for every mask: {report['mask_rule']['description']}.",
        f"- Mask values (pixels): {shown}.",
        "- Pixels per class index: "
        + ", ".join(f"{c}: {n}" for c, n in report["class_pixels"].items())
        + f"; ignored: {report['ignored_pixels']}.",
        f"- Foreground share per mask (ignored pixels left out): mean {fg['mean']:.3f}, "
        f"min {fg['min']:.3f}, max {fg['max']:.3f}; {fg['empty_masks']} empty mask(s).",
    ]
    skipped = report["skipped"]
    if skipped:
        by_kind = ", ".join(f"{k} {n}" for k, n in report["skipped_by_kind"].items())
        heading = f"## Skipped files ({len(skipped)}: {by_kind})"
        lines += _capped_list(heading, [f"`{s['file']}`: {s['reason']}" for s in skipped])
    if report["source"] is not None:
        lines += _source_lines(report["source"])
    return "\n".join(lines) + "\n"


def _source_lines(source: dict[str, Any]) -> list[str]:
    """The section on the annotation export the download stage converted (``source.json``)."""
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in source["counts"].items())
    problems = source["problems"]
    lines = [
        "",
        f"## The {source['format']} export (download stage)",
        "",
        f"`{source['source']}`: {counts}.",
    ]
    if problems:
        by_kind = ", ".join(f"{k} {n}" for k, n in source["problems_by_kind"].items())
        heading = f"Left out or changed ({len(problems)}: {by_kind}):"
        lines += _capped_list(heading, [f"{p['item']}: {p['reason']}" for p in problems])
    return lines


def _capped_list(heading: str, entries: list[str]) -> list[str]:
    """A Markdown list under ``heading``: the first MD_SKIPPED entries, then a count of the rest
    (report.json lists all)."""
    lines = ["", heading, "", *(f"- {entry}" for entry in entries[:MD_SKIPPED])]
    if len(entries) > MD_SKIPPED:
        lines.append(f"- ... and {len(entries) - MD_SKIPPED} more (see report.json)")
    return lines
