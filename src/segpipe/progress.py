"""Progress bars on the loops over files and batches: count, rate and time left on stderr.

Shown on a terminal and nowhere else unless asked, so that logs (``dvc repro > log``, CI) get
only the one summary line each loop logs when it ends. ``SEGPIPE_PROGRESS`` decides: ``1``
always, ``0`` never, unset or ``auto`` when stderr is a terminal. Under ``torchrun`` only the
first process draws: the others' bars would write over its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from segpipe.errors import SegpipeError

T = TypeVar("T")

PROGRESS_ENV = "SEGPIPE_PROGRESS"
"""The environment variable that shows (``1``) or hides (``0``) the bars anywhere."""

_SETTINGS = {"1": True, "0": False, "auto": None, "": None}


def shown() -> bool:
    """Whether progress bars are drawn: as :data:`PROGRESS_ENV` says, else on a terminal;
    never in a process of ``torchrun`` but the first (``RANK`` above 0).

    Raises:
        SegpipeError: :data:`PROGRESS_ENV` holds another value.
    """
    value = os.environ.get(PROGRESS_ENV, "")
    if value.strip().lower() not in _SETTINGS:
        raise SegpipeError(
            f"{PROGRESS_ENV}={value!r}: must be 1 (always show progress bars), 0 (never) or "
            "auto (on a terminal, the default); set it to one of them or unset it"
        )
    setting = _SETTINGS[value.strip().lower()]
    if os.environ.get("RANK", "0") != "0":
        return False
    return sys.stderr.isatty() if setting is None else setting


def progress(
    items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "file"
) -> tqdm:
    """``items`` with a progress bar: ``desc: 40%|####  | 400/1000 [00:12<00:18, 33.1file/s]``.

    The bar is redrawn at most once a second and cleared when the loop ends: the caller logs
    its summary line. ``total`` defaults to ``len(items)`` where there is one.
    """
    return tqdm(
        items,
        desc=desc,
        total=total,
        unit=unit,
        disable=not shown(),
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
        file=sys.stderr,
    )


@contextlib.contextmanager
def logs_above_bars() -> Iterator[None]:
    """Console log records printed above the bars drawn meanwhile, not through them.

    Raises:
        SegpipeError: a bad :data:`PROGRESS_ENV`, at once rather than at the first loop.
    """
    shown()
    with logging_redirect_tqdm():
        yield
