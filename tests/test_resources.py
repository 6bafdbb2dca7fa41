"""The ordered thread-pool map of the split and cache stages: order, errors, bounded work."""

from __future__ import annotations

import ast
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


UNIX_ONLY = ("resource", "fcntl", "pwd", "grp", "termios")
"""Standard modules Windows lacks: a module that imports one at its top fails to import there."""


def test_without_the_resource_module_it_imports_and_measures():
    """As on Windows (no ``resource``, no /proc): the module the split, cache and train stages
    import still imports, and the peak falls back to psutil's."""
    child = (
        "import pathlib, sys\n"
        "import psutil\n"  # psutil's Linux part itself uses resource; its Windows one does not
        "sys.modules['resource'] = None\n"
        "def no_proc(self, *args, **kwargs): raise OSError('no /proc here')\n"
        "pathlib.Path.read_text = no_proc\n"
        "from segpipe.resources import peak_rss_mb\n"
        "print(peak_rss_mb())"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 10


def test_no_module_imports_a_unix_only_module_at_its_top():
    src = Path(__file__).resolve().parents[1] / "src" / "segpipe"
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in UNIX_ONLY]
    assert found == []
