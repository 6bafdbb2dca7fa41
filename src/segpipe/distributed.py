"""Multi-process training with PyTorch's own runtime (``torchrun``): setup and reductions.

Launched by ``torchrun``, each process reads its rank from the environment. Metrics are reduced
by summing the raw counts over ranks (never by averaging per-rank scores), and only rank 0
writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from segpipe.runtime import pick_device

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands: ``world_size == 1`` is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> Context:
    """Join the process group when started by ``torchrun`` with more than one process.

    Backend ``nccl`` on CUDA (one GPU per process, by ``LOCAL_RANK``), ``gloo`` on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(device=pick_device())
    device = pick_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device.index)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def finish(ctx: Context) -> None:
    """Wait until every process is done, so that no process tears down the group while another
    still writes (gloo aborts a process whose peer disconnects under it)."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()


def cleanup(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all processes (a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_lists(values: list) -> list:
    """Concatenate a list from every process, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``n`` takes items ``r, r + n, r + 2n, ...``: every item exactly once.

    Unlike ``DistributedSampler``, nothing is padded or repeated, so summed validation counts
    equal those of one process over the whole set.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
