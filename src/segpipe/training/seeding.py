"""One seeding function for every RNG the pipeline touches."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, numpy and torch; return a torch generator for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own, reproducible streams.

    torch already seeds each worker with ``base_seed + worker_id``, where the base seed comes
    from the loader's generator. albumentations keeps its own RNG (seeded once in ``Compose``),
    which every worker would otherwise copy: reseed it from the worker's torch seed too.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
