"""Optimisation: the optimizer by name, warm-up, cosine and plateau schedules, early stopping
and their state across a resume."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from segpipe.constants import LIVE_HISTORY
from segpipe.errors import SegpipeError
from segpipe.training import resume, train
from segpipe.training.engine import build_optimizer
from segpipe.training.schedule import EpochSchedule, stops_early

from .helpers import tiny_params

LR = 0.01


def schedule(model: torch.nn.Module | None = None, **train_overrides: object) -> EpochSchedule:
    """The schedule of ``train`` overrides, over SGD on ``model`` (a small linear layer)."""
    model = model or torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    return EpochSchedule(optimizer, tiny_params(lr=LR, **train_overrides).train)


def lrs(s: EpochSchedule, scores: list[float]) -> list[float]:
    """The lr each epoch runs at, stepping with ``scores`` as validation Dice."""
    out = []
    for score in scores:
        out.append(s.optimizer.param_groups[0]["lr"])
        s.step(score)
    return out


def test_warmup_ramps_then_cosine_decays():
    got = lrs(schedule(epochs=6, warmup_epochs=2, scheduler="cosine"), [0.5] * 6)
    cosine = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert got == pytest.approx([LR / 3, 2 * LR / 3, *(LR * c for c in cosine)])


def test_constant_lr_without_warmup_is_exactly_train_lr():
    assert lrs(schedule(epochs=4), [0.1, 0.2, 0.3, 0.4]) == [LR] * 4


def test_plateau_cuts_after_patience_epochs_without_a_better_dice():
    s = schedule(epochs=8, scheduler="plateau", plateau_patience=2, plateau_factor=0.5)
    got = lrs(s, [0.5, 0.6, 0.6, 0.55, 0.7, 0.6, math.nan, 0.9])
    # epochs 3 and 4 do not beat 0.6: cut after epoch 4; epochs 6, 7 do not beat 0.7: cut
    # again (NaN ranks below every score, as the train loop passes it -1).
    assert got == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2, LR / 2, LR / 4])


def test_schedule_state_round_trips_mid_run():
    a = schedule(epochs=8, warmup_epochs=1, scheduler="plateau", plateau_patience=1)
    lrs(a, [0.5, 0.4, 0.3])
    b = schedule(epochs=8, warmup_epochs=1, scheduler="plateau", plateau_patience=1)
    b.load_state_dict(a.state_dict())
    assert lrs(b, [0.2, 0.9, 0.1]) == lrs(a, [0.2, 0.9, 0.1])


def test_schedule_state_travels_in_the_resume_file(tmp_path):
    from segpipe.data.dataset import build_transform

    def state(seed: int) -> resume.TrainingState:
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 2)
        sched = schedule(model, epochs=8, warmup_epochs=2, scheduler="plateau", plateau_patience=1)
        augment = build_transform(8, augment=True, seed=seed)
        return resume.TrainingState(
            model,
            sched.optimizer,
            sched,
            None,
            augment,
            torch.Generator().manual_seed(seed),
        )

    saved = state(0)
    lrs(saved.scheduler, [0.5, 0.6, 0.4, 0.3])
    model, live = tmp_path / "model.pt", tmp_path / "live"
    snapshots = resume.Resume(tmp_path / "resume", "run")
    snapshots.snapshot(
        saved, epoch=4, best={"dice": 0.6, "epoch": 2}, model_path=model, live_dir=live
    )
    fresh = state(1)
    snapshots.restore(fresh, 8, model_path=model, live_dir=live)
    assert fresh.scheduler.state_dict() == saved.scheduler.state_dict()
    assert fresh.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"] < LR


@pytest.mark.parametrize(
    ("name", "cls", "decay"),
    [
        ("adam", torch.optim.Adam, 0.0),
        ("adamw", torch.optim.AdamW, 0.05),
        ("sgd", torch.optim.SGD, 0.1),
    ],
)
def test_optimizers_by_name_with_weight_decay(name, cls, decay):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(
        name,
        model.parameters(),
        lr=0.1,
        device=torch.device("cpu"),
        weight_decay=decay,
        momentum=0.8,
    )
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["fused"]) == (0.1, decay, True)
    if name == "sgd":
        assert group["momentum"] == 0.8


def test_weight_decay_shrinks_weights_without_a_gradient():
    """AdamW's decay is decoupled: with a zero gradient, weights still shrink by lr * decay."""
    weight = torch.nn.Parameter(torch.ones(4))
    opt = build_optimizer("adamw", [weight], lr=0.1, device=torch.device("cpu"), weight_decay=0.5)
    weight.grad = torch.zeros(4)
    opt.step()
    assert torch.allclose(weight.detach(), torch.full((4,), 1 - 0.1 * 0.5))


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(
        SegpipeError, match=r"train.optimizer: unknown optimizer 'lamb' \(valid: adam, adamw, sgd\)"
    ):
        build_optimizer("lamb", [], lr=0.1, device=torch.device("cpu"))


def test_stops_early_counts_epochs_since_the_best():
    t = tiny_params(epochs=10, early_stopping=2).train
    assert not stops_early(t, best_epoch=3, done=4)
    assert stops_early(t, best_epoch=3, done=5)
    off = dataclasses.replace(t, early_stopping=None)
    assert not stops_early(off, best_epoch=1, done=9)


def fixed_validation(monkeypatch, dices: list[float]) -> None:
    """Validation returns these Dice scores, epoch by epoch (training itself is real)."""
    scores = iter(dices)

    def validate(*args, **kwargs):
        return {"loss": 0.5, "dice": next(scores), "iou": 0.1, "pixel_accuracy": 0.9}

    monkeypatch.setattr(train, "evaluate_epoch", validate)


def epochs_logged(live: Path) -> int:
    """Completed epochs: rows of the validation Dice history."""
    history = live / LIVE_HISTORY / "val" / "dice.tsv"
    return len(history.read_text().splitlines()) - 1


def test_early_stopping_stops_after_patience_and_keeps_the_best(monkeypatch, tmp_path, cache_dir):
    fixed_validation(monkeypatch, [0.3, 0.5, 0.4, 0.45, 0.9, 0.9])
    p = tiny_params(epochs=6, early_stopping=2)
    best = train.run(p, cache_dir, tmp_path / "model.pt", tmp_path / "live")
    assert best["epoch"] == 2 and best["dice"] == 0.5
    assert epochs_logged(tmp_path / "live") == 4, "epochs 3 and 4 did not beat epoch 2"
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 2
