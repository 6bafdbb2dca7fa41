"""What every stage script shares: logging setup and turning errors into one clear line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from segpipe.errors import SegpipeError


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


def run_stage(main: Callable[[], object], verbose: bool = False) -> int:
    """Run a stage; a :class:`SegpipeError` becomes ``error: <message>`` and exit code 1.

    Unexpected exceptions keep their traceback: they are bugs, not user errors.
    """
    verbose = verbose or os.environ.get("SEGPIPE_VERBOSE", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        main()
    except SegpipeError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
