"""Reading back the CSV tables the stages write, with file names kept as text.

pandas infers column types: left alone, the stem ``0003`` comes back as the integer 3, and
``NA``, ``null`` or ``nan`` as missing values. Every table segpipe reads goes through
:func:`read_table`, which keeps the name columns exactly as written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from segpipe.errors import SegpipeError

TEXT_COLUMNS = ("stem", "image", "mask")
"""Columns holding file names or paths: read as text, never as numbers or missing values."""
_MISSING = ("", "nan", "NaN", "NA", "null")
"""What marks a missing value in the other (numeric) columns; pandas writes NaN as ''."""


def read_table(path: Path, required: Iterable[str], what: str, hint: str) -> pd.DataFrame:
    """A CSV table with :data:`TEXT_COLUMNS` as text and the other columns parsed as usual.

    Args:
        required: columns the caller needs.
        what: what the file is, for errors ("split file").
        hint: what to do when it is missing ("run the split stage first").

    Raises:
        SegpipeError: the file is missing, empty or lacks a required column.
    """
    path = Path(path)
    try:
        header = pd.read_csv(path, nrows=0).columns
    except FileNotFoundError:
        raise SegpipeError(f"{path}: {what} not found ({hint})") from None
    except pd.errors.EmptyDataError:
        raise SegpipeError(f"{path}: {what} is empty ({hint})") from None
    missing = sorted(set(required) - set(header))
    if missing:
        raise SegpipeError(f"{path}: missing column(s) {missing}")
    text = [c for c in header if c in TEXT_COLUMNS]
    return pd.read_csv(
        path,
        dtype=dict.fromkeys(text, str),
        keep_default_na=False,
        na_values={c: list(_MISSING) for c in header if c not in text},
    )


def read_split(path: Path) -> pd.DataFrame:
    """Read a split CSV written by the split stage (stems and paths as text)."""
    frame = read_table(path, ("stem", "image", "mask"), "split file", "run the split stage first")
    if frame.empty:
        raise SegpipeError(f"{path}: the split is empty")
    return frame


def dataset_folder(*frames: pd.DataFrame) -> Path | None:
    """The folder that holds every image and mask the split tables name (the download stage's
    output, as a rule), links not followed; None for no rows, or when only the file system's
    root holds them all. A stage that writes a folder must stay out of it."""
    parents = {
        os.path.dirname(os.path.abspath(p)) for f in frames for c in ("image", "mask") for p in f[c]
    }
    if not parents:
        return None
    common = Path(os.path.commonpath(sorted(parents)))
    return None if common == Path(common.anchor) else common
