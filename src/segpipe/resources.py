"""The machine's cores and memory: an ordered thread-pool map for the stages that decode every
file of a dataset, how many threads it should use, and a process's peak memory.

PIL's decoders, OpenCV's resize and most numpy reductions release the GIL, so a few threads
decode several files at once while the calling thread keeps the order and the bookkeeping.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_DATA_THREADS = 4
"""More threads than this gain nothing: the Python between two decodes holds the GIL."""


def data_threads() -> int:
    """Threads for decoding a dataset: one per core this process may use, at most
    :data:`MAX_DATA_THREADS`; 0 (the calling thread alone) on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = min(cores or 1, MAX_DATA_THREADS)
    return n if n > 1 else 0


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, threads: int) -> Iterator[R]:
    """``fn(item)`` for each item, in the order of ``items``.

    With ``threads`` > 0 the calls run on a pool of that many threads, at most ``4 * threads``
    ahead of the consumer, so memory stays bounded however many items there are; with 0 they
    run one by one on the calling thread. An exception raised by ``fn`` is raised here at its
    item's turn, and the calls not yet started are cancelled (so are they when the consumer
    stops early).
    """
    if threads <= 0:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="segpipe-data")
    queue: collections.deque[Future[R]] = collections.deque()
    try:
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= 4 * threads:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``getrusage``'s maximum survives an
    ``exec``, so a child process started by a big parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource  # Unix only: imported here so that this module imports on Windows
    except ImportError:
        return _peak_working_set_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _peak_working_set_mb() -> float:
    """Peak memory where there is no ``resource`` module (Windows): psutil's peak working set
    (psutil comes with DVC), or its resident size where the platform reports no peak."""
    import psutil

    info = psutil.Process().memory_info()
    return getattr(info, "peak_wset", info.rss) / 2**20
