"""The split stage: validate image/mask pairs, split them deterministically, report the data.

Every pair is decoded once and checked (see :mod:`segpipe.data.validate`); bad pairs are
skipped with a warning, problems that affect the whole dataset stop the stage. One mask rule is
decided from the value histograms of all masks and written to ``mask_rule.json`` (see
:mod:`segpipe.data.masks`), which every later reader of masks applies. The CSVs, the rule and
the report are built in a staging folder and swapped in together, so a failed run leaves
``out_dir`` as it was.

If the download stage wrote a ``source.json`` (an annotation export, see
:mod:`segpipe.data.source_report`), the report carries it, and its subsets, where it has them,
make the split (:func:`assign_listed`) instead of a random one. So do ``split.lists``: files
listing the stems of each split, or the dataset's own ``train/``, ``val/``, ``test/`` folders
(:func:`given_subsets`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.config import SplitConfig, SplitLists
from segpipe.constants import SPLITS
from segpipe.data.images import scan_folder
from segpipe.data.masks import RULE_FILE
from segpipe.data.source_report import SourceReport, read_source_report
from segpipe.data.validate import DatasetCheck, PairFacts, inspect_pair, render_markdown
from segpipe.errors import SegpipeError
from segpipe.files import require_apart, require_inside, staged_dir, write_error
from segpipe.progress import progress
from segpipe.resources import data_threads, ordered_map

log = logging.getLogger(__name__)

COLUMNS = ("stem", "image", "mask", "height", "width", "fg_fraction")


def list_images(folder: Path) -> dict[str, Path]:
    """Image files below ``folder`` by stem (see :func:`~segpipe.data.images.scan_folder`); other
    files are named in a warning, two files with one stem are an error."""
    if not folder.is_dir():
        raise SegpipeError(f"{folder}: folder not found")
    scan = scan_folder(folder)
    scan.require_unique_stems()
    scan.warn_others(folder.as_posix())
    return scan.images


def pair_files(
    raw_dir: Path, check: DatasetCheck | None = None, mask_suffix: str = ""
) -> pd.DataFrame:
    """Rows of (stem, image, mask): the mask of ``images/<stem>.<ext>`` is
    ``masks/<stem><mask_suffix>.<ext>``.

    Unpaired files are skipped with a warning (recorded in ``check`` if given); no pair at all
    is an error.
    """
    check = check or DatasetCheck(num_classes=2)
    images = list_images(raw_dir / "images")
    mask_files = list_images(raw_dir / "masks")
    check.n_images, check.n_masks = len(images), len(mask_files)
    masks: dict[str, Path] = {}
    for mask_stem, path in mask_files.items():
        stem = mask_stem.removesuffix(mask_suffix) if mask_suffix else mask_stem
        if stem == mask_stem and mask_suffix:
            check.skip(
                mask_stem,
                path,
                "no_image",
                f"no image for it: mask names end with data.mask_suffix {mask_suffix!r}",
            )
        else:
            masks[stem] = path
    for stem in sorted(images.keys() - masks.keys()):
        missing = f"named {stem}{mask_suffix}.<ext>" if mask_suffix else "with the same stem"
        check.skip(stem, images[stem], "no_mask", f"no mask {missing}")
    for stem in sorted(masks.keys() - images.keys()):
        check.skip(stem, masks[stem], "no_image", "no image with the same stem")
    stems = sorted(images.keys() & masks.keys())
    if not stems:
        raise SegpipeError(
            f"{raw_dir}: no image/mask pairs with matching file stems"
            + _suffix_hint(images.keys(), mask_files.keys(), mask_suffix)
        )
    return pd.DataFrame(
        {
            "stem": stems,
            "image": [images[s].as_posix() for s in stems],
            "mask": [masks[s].as_posix() for s in stems],
        }
    )


def _suffix_hint(image_stems: Iterable[str], mask_stems: Iterable[str], mask_suffix: str) -> str:
    """A hint naming the ``data.mask_suffix`` the masks seem to use (``0001_mask.png`` next to
    ``0001.jpg``), or ''."""
    images = set(image_stems)
    for mask in sorted(mask_stems):
        for i in range(len(mask) - 1, 0, -1):  # the longest image stem first
            if mask[i] in "_-. " and mask[:i] in images:
                found = mask[i:]
                if found != mask_suffix:
                    return (
                        f" (masks such as {mask!r} look like <stem>{found}: "
                        f"set data.mask_suffix: {found!r})"
                    )
    if mask_suffix:
        return f" (data.mask_suffix is {mask_suffix!r}: mask names must be <stem>{mask_suffix})"
    return ""


def assign_splits(n: int, cfg: SplitConfig, seed: int) -> np.ndarray:
    """A split name per item: a seeded permutation cut into test, val and train.

    Every item lands in exactly one split; each split gets at least one item. With
    ``cfg.folds``, the test split is the same as without, and val is fold ``cfg.fold`` of the
    rest (:func:`fold_of`).
    """
    n_test = max(1, round(n * cfg.test_fraction))
    n_val = max(1, round(n * cfg.val_fraction))
    if cfg.folds is None and n - n_test - n_val < 1:
        raise SegpipeError(
            f"split: {n} image(s) are too few for val_fraction={cfg.val_fraction} and "
            f"test_fraction={cfg.test_fraction} (each split needs at least one image)"
        )
    order = np.random.default_rng(seed).permutation(n)
    names = np.empty(n, dtype=object)
    names[order[:n_test]] = "test"
    rest = order[n_test:]
    names[rest] = "train"
    names[rest[:n_val] if cfg.folds is None else fold_of(rest, cfg, "non-test")] = "val"
    return names


def fold_of(items: np.ndarray, cfg: SplitConfig, what: str) -> np.ndarray:
    """Fold ``cfg.fold`` of ``items`` cut in order into ``cfg.folds`` near-equal parts (sizes
    differ by one at most), so the folds together hold every item once.

    Raises:
        SegpipeError: fewer ``items`` (``what`` pairs) than folds.
    """
    assert cfg.folds is not None and cfg.fold is not None
    if len(items) < cfg.folds:
        raise SegpipeError(
            f"split.folds: {cfg.folds} folds need at least {cfg.folds} {what} pairs (one "
            f"validation pair per fold), the data has {len(items)}; lower split.folds"
        )
    return np.array_split(items, cfg.folds)[cfg.fold]


def _no_folds_with_val(cfg: SplitConfig, given: str) -> None:
    """Folds make the val split: refuse them where ``given`` already makes one."""
    if cfg.folds is not None:
        raise SegpipeError(
            f"split.folds: {given} gives the val split, which folds would replace; set "
            "split.folds: null, or give no val split"
        )


def assign_listed(
    stems: Sequence[str], subsets: dict[str, list[str]], cfg: SplitConfig, seed: int
) -> np.ndarray:
    """A split name per stem from fixed lists (VOC's ``ImageSets/Segmentation``).

    With a ``test`` list, each list is its split. Without one (VOC publishes no test masks),
    the ``val`` list is the test split, as papers report VOC's val scores, and the validation
    split that picks the best epoch is a seeded share ``cfg.val_fraction`` of the ``train``
    list; ``cfg.test_fraction`` is not used.
    """
    where = {stem: name for name, listed in subsets.items() for stem in listed}
    unlisted = [stem for stem in stems if stem not in where]
    if unlisted:
        raise SegpipeError(
            f"split: {len(unlisted)} image(s), e.g. {unlisted[0]!r}, are in none of the image "
            "set lists the download stage recorded; rerun it (dvc repro)"
        )
    names = np.array([where[stem] for stem in stems], dtype=object)
    if "test" in subsets:
        _no_folds_with_val(cfg, "the image set lists' val.txt")
    else:
        names[names == "val"] = "test"
        _carve_val(names, cfg, seed)
    empty = [name for name in SPLITS if not (names == name).any()]
    if empty:
        raise SegpipeError(
            f"split: the image set lists leave the {empty[0]} split empty ({len(stems)} valid "
            "pairs listed); set data.voc.image_sets: false to split at random"
        )
    return names


FOLDER_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
"""``split.lists: folders``: the first folder of a pair's stem (``train/0001``) names its split."""


def given_subsets(
    cfg: SplitConfig, stems: Sequence[str], lists_dir: Path | None
) -> tuple[dict[str, list[str]], str] | None:
    """The split ``split.lists`` gives: each split's stems, and where they came from (for the
    report); None for a random split.

    Raises:
        SegpipeError: a list file missing, a stem twice in one file or in two files, or a
            folder that is no split's.
    """
    if cfg.lists is None:
        return None
    if isinstance(cfg.lists, SplitLists):
        files = {k: getattr(cfg.lists, k) for k in ("train", "val", "test")}
        subsets = {k: _read_list(v, k, lists_dir) for k, v in files.items() if v is not None}
        _require_disjoint(subsets, files)
        where = ", ".join(f"{k} {files[k]} ({len(v)})" for k, v in subsets.items())
        return subsets, f"the split lists: {where}"
    subsets: dict[str, list[str]] = {}
    for stem in stems:
        folder = stem.split("/")[0].lower() if "/" in stem else ""
        if folder not in FOLDER_SPLITS:
            raise SegpipeError(
                f"split.lists: folders: pair {stem!r} is in no {'/, '.join(FOLDER_SPLITS)}/ "
                "folder; set split.lists: null to split at random"
            )
        subsets.setdefault(FOLDER_SPLITS[folder], []).append(stem)
    counts = ", ".join(f"{k} ({len(v)})" for k, v in sorted(subsets.items()))
    return subsets, f"the dataset's folders: {counts}"


def _read_list(value: str, name: str, lists_dir: Path | None) -> list[str]:
    """The stems a list file names, one per line (blank lines skipped)."""
    path = require_inside(value, lists_dir, f"split.lists.{name}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SegpipeError(f"split.lists.{name}: {value} cannot be read ({e})") from None
    stems, seen = [], {}
    for number, line in enumerate(lines, 1):
        stem = line.strip()
        if not stem:
            continue
        if stem in seen:
            raise SegpipeError(
                f"split.lists.{name}: {value} lists {stem!r} twice (lines {seen[stem]} and "
                f"{number}); list each pair once"
            )
        seen[stem] = number
        stems.append(stem)
    if not stems:
        raise SegpipeError(f"split.lists.{name}: {value} lists no stem")
    return stems


def _require_disjoint(subsets: dict[str, list[str]], files: dict[str, str | None]) -> None:
    owner: dict[str, str] = {}
    for name, stems in subsets.items():
        for stem in stems:
            if stem in owner:
                raise SegpipeError(
                    f"split.lists: {stem!r} is in both {files[owner[stem]]} ({owner[stem]}) and "
                    f"{files[name]} ({name}); a pair in two splits would be trained and tested on"
                )
            owner[stem] = name


def assign_given(
    stems: Sequence[str], subsets: dict[str, list[str]], cfg: SplitConfig, seed: int
) -> np.ndarray:
    """A split name per stem from ``split.lists`` (:func:`given_subsets`); without a ``val``
    subset, a seeded share ``cfg.val_fraction`` of ``train`` is the validation split. Pairs in
    no list get no split (None), and a warning.

    Raises:
        SegpipeError: a listed stem that is no valid pair, or a split left empty.
    """
    have = set(stems)
    for name, listed in subsets.items():
        absent = [stem for stem in listed if stem not in have]
        if absent:
            raise SegpipeError(
                f"split.lists.{name}: {len(absent)} stem(s), e.g. {absent[0]!r}, are no valid "
                "image/mask pair of the dataset (missing, or skipped: see the warnings)"
            )
    where = {stem: name for name, listed in subsets.items() for stem in listed}
    names = np.array([where.get(stem) for stem in stems], dtype=object)
    left_out = int(sum(name is None for name in names))
    if left_out:
        log.warning("split.lists: %d pair(s) are in no list and left out of every split", left_out)
    if "val" in subsets:
        _no_folds_with_val(cfg, "split.lists (a val list or folder)")
    else:
        _carve_val(names, cfg, seed)
    _require_filled(names, "split.lists")
    return names


def _carve_val(names: np.ndarray, cfg: SplitConfig, seed: int) -> None:
    """Move a seeded share ``cfg.val_fraction`` of the train split to val, in place; with
    ``cfg.folds``, fold ``cfg.fold`` of the train split in a seeded order."""
    train = np.flatnonzero(names == "train")
    shuffled = train[np.random.default_rng(seed).permutation(len(train))]
    if cfg.folds is None:
        names[shuffled[: max(1, round(len(train) * cfg.val_fraction))]] = "val"
    else:
        names[fold_of(shuffled, cfg, "train")] = "val"


def _require_filled(names: np.ndarray, fix: str) -> None:
    empty = [name for name in SPLITS if not (names == name).any()]
    if empty:
        raise SegpipeError(
            f"split: the {empty[0]} split is empty ({len(names)} valid pairs); change {fix}"
        )


def split_method(source: SourceReport | None, cfg: SplitConfig, seed: int) -> str:
    """How the split was made, for the report."""
    if source is None or source.subsets is None:
        if cfg.folds is not None:
            return (
                f"random: a permutation (seed {seed}) cut into test and {cfg.folds} folds of "
                f"the rest; {_fold_words(cfg)}"
            )
        return f"random: a permutation (seed {seed}) cut into test, val and train"
    if "test" in source.subsets:
        return "the image set lists: train.txt, val.txt and test.txt"
    rest = "" if cfg.folds is not None else "; train the rest of train.txt"
    return f"the image set lists: test is val.txt; {_val_words(cfg, seed, 'train.txt')}{rest}"


def _fold_words(cfg: SplitConfig) -> str:
    """Which fold is val, for the report: ``fold 2 of 5 (0..4)``."""
    return (
        f"val is fold {cfg.fold} of {cfg.folds} (0..{cfg.folds - 1}), train the other "
        f"{cfg.folds - 1} folds"
    )


def _val_words(cfg: SplitConfig, seed: int, train: str) -> str:
    """How val was carved from the ``train`` list, for the report."""
    if cfg.folds is None:
        return f"val is {cfg.val_fraction:g} of {train} (seed {seed})"
    return f"{train} cut into {cfg.folds} folds (seed {seed}); {_fold_words(cfg)}"


def validate_pairs(frame: pd.DataFrame, check: DatasetCheck, *, threads: int) -> pd.DataFrame:
    """The valid pairs of ``frame`` with their size (``COLUMNS`` but ``fg_fraction``, which
    needs the mask rule that ``check.decide`` takes from all masks). The pairs are read on
    ``threads`` threads (see :func:`~segpipe.resources.ordered_map`) and recorded in order."""
    colours = check.mask_colours is not None

    def inspect(pair: tuple[str, str, str]) -> PairFacts:
        return inspect_pair(pair[0], Path(pair[1]), Path(pair[2]), colours)

    pairs = frame[["stem", "image", "mask"]].itertuples(index=False, name=None)
    rows = []
    checked = progress(
        ordered_map(inspect, pairs, threads=threads), "check", total=len(frame), unit="pair"
    )
    for i, facts in enumerate(checked, start=1):
        row = check.record(facts)
        if row is not None:
            rows.append(row)
        if checked.disable and i % 500 == 0:  # in logs, where no bar is drawn
            log.info("checked %d of %d pairs", i, len(frame))
    return pd.DataFrame(rows, columns=list(COLUMNS[:-1]))


def run(
    cfg: SplitConfig,
    seed: int,
    raw_dir: Path,
    out_dir: Path,
    num_classes: int = 2,
    ignore_index: int | None = None,
    mask_suffix: str = "",
    mask_colours: tuple[tuple[int, ...], ...] | None = None,
    *,
    ignore_colour: tuple[int, ...] | None = None,
    threads: int | None = None,
    lists_dir: Path | None = None,
) -> dict[str, int]:
    """Write ``train.csv``, ``val.csv``, ``test.csv``, ``mask_rule.json``, ``report.json`` and
    ``report.md`` to ``out_dir`` (replaced as a whole); no image is copied.

    The split is ``cfg.lists``'s if set (list files must lie below ``lists_dir`` if given: the
    folder the split stage depends on), else the export's subsets, else a seeded random one.

    The pairs are read on ``threads`` threads (default :func:`~segpipe.resources.data_threads`;
    0 reads them one by one); the outputs are the same either way.

    Returns:
        The number of pairs in each split.
    """
    threads = data_threads() if threads is None else threads
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    require_apart(out_dir, "--out", {"--raw": raw_dir})
    check = DatasetCheck(num_classes, ignore_index, mask_colours, ignore_colour)
    frame = validate_pairs(pair_files(raw_dir, check, mask_suffix), check, threads=threads)
    if frame.empty:
        raise SegpipeError(f"{raw_dir}: no valid image/mask pairs left ({_skipped(check)})")
    rule = check.decide(raw_dir / "masks")
    frame["fg_fraction"] = [round(fg, 6) for fg in check.fg]
    source = read_source_report(raw_dir)
    given = given_subsets(cfg, list(frame["stem"]), lists_dir)
    frame["split"] = _assign(frame, source, cfg, seed, check, given)
    parts = {name: frame[frame["split"] == name].drop(columns="split") for name in SPLITS}
    counts = {name: len(part) for name, part in parts.items()}
    method = split_method(source, cfg, seed) if given is None else _given_method(given, cfg, seed)
    report = check.report(raw_dir, counts, method, source.to_json() if source else None)
    _write_outputs(out_dir, parts, rule.to_json(), report)
    _warn_about(report, check, source, ignore_index, out_dir / "report.md")
    log.info("masks: %s", rule.describe())
    log.info("split %d valid pairs: %s", len(frame), counts)
    return counts


def _assign(
    frame: pd.DataFrame,
    source: SourceReport | None,
    cfg: SplitConfig,
    seed: int,
    check: DatasetCheck,
    given: tuple[dict[str, list[str]], str] | None,
) -> np.ndarray | list[str]:
    """Each pair's split: ``split.lists``'s, else the export's own subsets where it has them,
    else a seeded random cut. An error names the skipped files too, which may be why a split
    came out empty."""
    try:
        if given is not None:
            return assign_given(list(frame["stem"]), given[0], cfg, seed)
        if source is not None and source.subsets is not None:
            return assign_listed(list(frame["stem"]), source.subsets, cfg, seed)
        return assign_splits(len(frame), cfg, seed)
    except SegpipeError as e:
        if not check.skipped:
            raise
        raise SegpipeError(f"{e}; {_skipped(check)}") from None


def _given_method(given: tuple[dict[str, list[str]], str], cfg: SplitConfig, seed: int) -> str:
    subsets, where = given
    if "val" in subsets:
        return where
    return f"{where}; {_val_words(cfg, seed, 'train')}"


def _write_outputs(out_dir: Path, parts: dict[str, pd.DataFrame], rule: dict, report: dict) -> None:
    """The split CSVs, the mask rule and the report, swapped in together."""
    try:
        with staged_dir(out_dir) as staging:
            for name, part in parts.items():
                part.to_csv(staging / f"{name}.csv", index=False)
            (staging / RULE_FILE).write_text(json.dumps(rule, indent=2) + "\n")
            (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            (staging / "report.md").write_text(render_markdown(report))
    except OSError as e:  # a full disk, say: the staging folder is gone, out_dir untouched
        raise write_error(out_dir, e, "nothing in it was changed") from None


def _warn_about(
    report: dict,
    check: DatasetCheck,
    source: SourceReport | None,
    ignore_index: int | None,
    report_md: Path,
) -> None:
    """Warnings about the dataset as a whole, each pointing at the report."""
    foreground = sum(n for c, n in report["class_pixels"].items() if c != "0")
    if foreground == 0:
        log.warning("no mask has a foreground pixel%s", _empty_hint(report, source, ignore_index))
    if check.skipped:
        log.warning("skipped %d file(s); see %s", len(check.skipped), report_md.as_posix())
    if source is not None and source.problems:
        log.warning(
            "the download stage left out or changed %d item(s) of the %s export; each is named "
            "in %s",
            len(source.problems),
            source.format,
            report_md.as_posix(),
        )


def _empty_hint(report: dict, source: SourceReport | None, ignore_index: int | None) -> str:
    """Why no mask has a foreground pixel, where the settings can say: every COCO object a
    crowd region drawn as ``data.ignore_index``, or the ignored value marking the objects."""
    if ignore_index is None or not report["ignored_pixels"]:
        return ""
    counts = source.counts if source is not None and source.format == "coco" else {}
    if counts.get("crowd_regions") and not counts.get("instances"):
        return (
            f" (every annotation of the COCO export is a crowd region, iscrowd: 1, drawn as "
            f"data.ignore_index {ignore_index} and left out: set data.ignore_index: null to "
            "train on crowd regions as their class)"
        )
    return (
        f" (data.ignore_index {ignore_index} leaves out {report['ignored_pixels']} pixels: if "
        f"{ignore_index} marks the objects, set data.ignore_index: null)"
    )


def _skipped(check: DatasetCheck) -> str:
    return f"{len(check.skipped)} file(s) skipped, see the warnings above"
