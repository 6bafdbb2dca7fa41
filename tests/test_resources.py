"""The ordered thread-pool map of the split and cache stages: order, errors, bounded work."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from segpipe.resources import data_threads, ordered_map, peak_rss_mb


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_results_come_in_input_order(threads):
    delays = random.Random(0).choices([0, 0.001, 0.004], k=60)

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    assert list(ordered_map(slow_square, range(60), threads=threads)) == [i * i for i in range(60)]


@pytest.mark.parametrize("threads", [0, 2])
def test_an_error_is_raised_at_its_items_turn(threads):
    def fail_on_5(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    got = []
    with pytest.raises(ValueError, match="item 5"):
        for value in ordered_map(fail_on_5, range(100), threads=threads):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_work_in_flight_is_bounded_and_unstarted_calls_are_cancelled():
    """At most 4 x threads calls run ahead of the consumer, whatever the input's length; a
    consumer that stops early leaves the rest unstarted."""
    lock, started = threading.Lock(), []
    consumed = 0
    ahead = []

    def record(i: int) -> int:
        with lock:
            started.append(i)
            ahead.append(len(started) - consumed)
        return i

    for value in ordered_map(record, range(1000), threads=2):
        consumed += 1
        time.sleep(0.0005)
        if value == 49:
            break
    assert max(ahead) <= 4 * 2 + 1
    assert len(started) < 50 + 4 * 2 + 1


def test_thread_count_and_peak_memory():
    assert data_threads() == 0 or 2 <= data_threads() <= 4
    assert peak_rss_mb() > 10


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux's VmHWM")
def test_a_child_of_a_big_process_reports_its_own_peak():
    """getrusage's peak survives exec: a benchmark's child would report its parent's size."""
    ballast = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident in this process
    child = "from segpipe.resources import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert peak_rss_mb() > 400 > 4 * float(out.stdout)
    del ballast
