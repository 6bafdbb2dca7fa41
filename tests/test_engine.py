"""The CPU training settings of the engine: fused optimizers and the allocator."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from segpipe.runtime import reuse_freed_memory
from segpipe.training.engine import build_optimizer


def test_adam_is_fused_on_cpu():
    params = torch.nn.Linear(2, 2).parameters()
    opt = build_optimizer("adam", params, lr=1e-3, device=torch.device("cpu"))
    assert opt.defaults["fused"] is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_reuse_freed_memory_sets_glibc_malloc_options():
    assert reuse_freed_memory() is True
    assert reuse_freed_memory() is True  # idempotent
    big = torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)  # 64 MiB, now from the heap
    assert int(big.sum()) == 64 * 2**20


def test_reuse_freed_memory_is_a_no_op_without_mallopt(monkeypatch):
    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert reuse_freed_memory() is False
