"""What every stage script shares: logging setup and turning errors into one clear line."""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from segpipe.errors import SegpipeError
from segpipe.progress import logs_above_bars


def _digest(path: str | Path | None) -> str | None:
    """The SHA-256 of a file's bytes; None when there is no such file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show full tracebacks and debug logs (also: SEGPIPE_VERBOSE=1)",
    )
    return p


def run_stage(
    main: Callable[[], object], *, verbose: bool = False, params: str | Path | None = None
) -> int:
    """Run a stage; a :class:`SegpipeError` becomes ``error: <message>`` and exit code 1.

    With ``params`` (the stage's parameters file), a file that changed while the stage ran is
    an error too: the outputs may not match the parameters DVC records for them (two
    ``dvc exp run`` at once in one workspace do this).

    Unexpected exceptions keep their traceback: they are bugs, not user errors.
    """
    verbose = verbose or os.environ.get("SEGPIPE_VERBOSE", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        before = _digest(params)
        with logs_above_bars():
            main()
        if before != _digest(params):
            raise SegpipeError(
                f"{params}: changed while this stage ran (another `dvc exp run` or an edit in "
                "this workspace?), so its outputs may not match the parameters now in the "
                "file; run it again, one run at a time (`dvc exp run --queue` or `--temp` "
                "runs experiments side by side)"
            )
    except SegpipeError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Objects the interrupt tore down half-built (a progress bar, say) may fail in their
        # destructors at exit: noise after a Ctrl-C, not errors.
        sys.unraisablehook = lambda _: None
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def exit_process(code: int) -> NoReturn:
    """End a command's process with ``code``, without the garbage collector's last pass over
    every object at interpreter exit: with torch and smp imported that pass alone takes about a
    second. Nothing is lost: the command has written and closed its outputs, atexit handlers
    (logging, temporary folders, worker pools) still run, and the system frees the memory.
    For the ``__main__`` of scripts and the ``segpipe`` command, never in-process callers."""
    gc.freeze()
    raise SystemExit(code)
