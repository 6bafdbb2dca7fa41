"""Two processes with torchrun (gloo on CPU): one set of outputs, exact metric reduction."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from segpipe.data.cache import cache_paths
from segpipe.data.dataset import CachedDataset, build_transform
from segpipe.distributed import ShardSampler
from segpipe.model.checkpoint import load_checkpoint
from segpipe.runtime import Runtime
from segpipe.training.engine import evaluate_epoch
from segpipe.training.losses import build_loss
from segpipe.training.train import VAL_THRESHOLD, make_loader

from .helpers import tiny_params, train_args, write_params

pytestmark = pytest.mark.slow


def test_shard_sampler_covers_every_item_once():
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_two_process_training_matches_single_process_metrics(tmp_path, cache_dir):
    p = tiny_params()
    # fp32: identical numerics whichever process computes an image. efficientnet: its encoder
    # has parameters the Unet never uses, which plain DDP rejects.
    p = dataclasses.replace(
        p,
        model=dataclasses.replace(p.model, encoder="efficientnet-b0"),
        train=dataclasses.replace(p.train, epochs=2, precision="fp32", channels_last=False),
    )
    params_file = write_params(tmp_path / "params.yaml", p)
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = subprocess.run(
        [*launcher, "--nproc_per_node", "2", *train_args(params_file, cache_dir, out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # Exactly one set of outputs, written by rank 0; no resume state in multi-process runs.
    assert sorted(p.name for p in out.iterdir()) == ["live", "model.pt"]
    assert sorted(p.name for p in (out / "live").iterdir()) == ["metrics.json", "plots"]
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["perf"]["processes"] == 2
    assert summary["step"] == 1

    # The validation metrics of the 2-process run equal one process's on the same predictions.
    model, meta = load_checkpoint(out / "model.pt")
    val = CachedDataset(
        *cache_paths(cache_dir, "val"), build_transform(64, augment=False, seed=p.seed)
    )
    single = evaluate_epoch(
        model,
        make_loader(val, 4, shuffle=False, num_workers=0),
        build_loss("bce+dice", 2),
        Runtime(torch.device("cpu"), None, channels_last=False),
        num_classes=2,
        threshold=VAL_THRESHOLD,
    )
    dice_history = (out / "live" / "plots" / "metrics" / "val" / "dice.tsv").read_text()
    logged = {
        int(row.split("\t")[0]): float(row.split("\t")[1]) for row in dice_history.splitlines()[1:]
    }
    assert single["dice"] == pytest.approx(logged[meta.epoch - 1], abs=1e-9)
    assert single["dice"] == pytest.approx(meta.val_dice, abs=1e-9)
    # Count-based metrics are exact. (The loss is not compared: its Dice term is computed per
    # batch, and the batches differ between one and two processes.)
    if meta.epoch == 2:  # the summary holds the last epoch's values
        for key in ("dice", "iou", "pixel_accuracy"):
            assert single[key] == pytest.approx(summary["val"][key], abs=1e-6)
