"""Interrupted training resumes after its last completed epoch and ends with identical results."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import segpipe
from segpipe.config import load_params, parse_augment
from segpipe.files import staging_leftovers
from segpipe.imports import import_closure
from segpipe.training import resume, train

from .helpers import stage_in_process, tiny_params, train_args, write_params

EPOCHS = 4


def train_cmd(params_file: Path, cache_dir: Path, out: Path) -> list[str]:
    return [sys.executable, *train_args(params_file, cache_dir, out)]


def default_sigint() -> None:
    """A shell without job control starts background commands with SIGINT ignored, and
    children inherit that; give the training process the default handler back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def outcome(out: Path) -> dict:
    """Everything a finished run leaves behind, in comparable form."""
    model = torch.load(out / "model.pt", weights_only=True)
    history = {
        str(p.relative_to(out)): p.read_text()
        for p in sorted((out / "live" / "plots").rglob("*.tsv"))
    }
    return {
        "epoch": model["epoch"],
        "val_dice": model["val_dice"],
        "state": model["state_dict"],
        "history": history,
    }


@pytest.fixture
def cache_dir(tiny_run) -> Path:
    """The session's tiny cache: the tests here only read it."""
    return tiny_run / "cache"


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """Every piece of state a resume must carry: AdamW's moments, the warm-up and plateau
    schedule (its best score and patience count), an augmentation list's random streams."""
    p = tiny_params(
        epochs=EPOCHS,
        optimizer="adamw",
        weight_decay=0.01,
        warmup_epochs=1,
        scheduler="plateau",
        plateau_patience=1,
        augment=parse_augment(
            [{"Affine": {"rotate": [-20, 20], "p": 0.5}}, {"HorizontalFlip": {"p": 0.5}}]
        ),
    )
    return write_params(tmp_path_factory.mktemp("resume") / "params.yaml", p)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, params_file, tiny_run) -> Path:
    """An uninterrupted run of what the train stage runs, here in this process: what every
    interrupted run must end as."""
    out = tmp_path_factory.mktemp("straight")
    p = load_params(params_file)
    train.run(p, tiny_run / "cache", out / "model.pt", out / "live", out / "resume")
    assert list((out / "resume").iterdir()) == [], "a finished run deletes its resume state"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_training_resumes_to_identical_result(
    tmp_path, params_file, cache_dir, straight, sig
):
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(
        train_cmd(params_file, cache_dir, interrupted),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    states = interrupted / "resume"
    deadline = time.monotonic() + 120
    while not list(states.glob(f"*/{resume.STATE}")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no resume state written"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    (state_file,) = states.glob(f"*/{resume.STATE}")
    saved = torch.load(state_file, weights_only=True)["epoch"]
    assert 1 <= saved < EPOCHS, "killed mid-run, after at least one epoch"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        # As `dvc repro` does before it reruns a stage whose outputs are not persisted: the
        # checkpoint and history of the completed epochs come back from the resume state.
        (interrupted / "model.pt").unlink(missing_ok=True)
        shutil.rmtree(interrupted / "live")
    else:
        assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr

    # The rerun is the same stage script, here in this process (no second start and imports).
    again = stage_in_process("train.py", *train_args(params_file, cache_dir, interrupted)[1:])
    assert again.returncode == 0, again.stderr
    assert f"resuming after epoch {saved}/{EPOCHS}" in again.stderr
    a, b = outcome(straight), outcome(interrupted)
    assert a["history"] == b["history"]
    assert (a["epoch"], a["val_dice"]) == (b["epoch"], b["val_dice"])
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert not list(interrupted.glob(".*.pt*")), "no torn temporary files left"
    assert list(states.iterdir()) == [], "the finished run deleted its state, nothing is left"


def test_changed_params_or_data_start_over(tmp_path, cache_dir):
    p = tiny_params()
    files = [cache_dir / "train_images.npy"]
    base = resume.fingerprint(p, files)
    assert resume.fingerprint(p, files) == base
    other = dataclasses.replace(p, train=dataclasses.replace(p.train, lr=0.5))
    assert resume.fingerprint(other, files) != base
    assert resume.fingerprint(p, [cache_dir / "val_images.npy"]) != base
    resume.save(tmp_path / "r.pt", {"fingerprint": base, "epoch": 1})
    assert resume.load(tmp_path / "r.pt", base)["epoch"] == 1
    assert resume.load(tmp_path / "r.pt", "something else") is None
    (tmp_path / "torn.pt").write_bytes(b"\x80\x04garbage")
    assert resume.load(tmp_path / "torn.pt", base) is None
    assert resume.load(tmp_path / "missing.pt", base) is None


def test_changed_code_starts_over(tmp_path, cache_dir):
    """Editing a module the train stage runs (the loss) changes the fingerprint, so a
    resumed run never mixes epochs of old and new code; a plot-only module does not."""
    package = tmp_path / "segpipe"
    shutil.copytree(
        Path(segpipe.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    closure = import_closure("segpipe.training.train", package)
    names = {p.name for p in closure}
    assert {"train.py", "losses.py", "engine.py", "network.py"} <= names
    assert "plot.py" not in names and "predict.py" not in names
    p, files = tiny_params(), [cache_dir / "train_images.npy"]
    base = resume.fingerprint(p, files, closure)
    assert resume.fingerprint(p, files) == resume.fingerprint(p, files)  # the installed code
    plot = package / "reporting" / "plot.py"
    plot.write_text(plot.read_text() + "\n# edited\n")
    assert resume.fingerprint(p, files, import_closure("segpipe.training.train", package)) == base
    losses = package / "training" / "losses.py"
    losses.write_text(losses.read_text() + "\n# edited\n")
    assert resume.fingerprint(p, files, import_closure("segpipe.training.train", package)) != base


def test_import_closure_follows_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "segpipe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from segpipe import b\n")
    (package / "b.py").write_text("from segpipe.c import thing\nimport os\n")
    (package / "c.py").write_text("from . import d\nthing = 1\n")
    (package / "d.py").write_text("")
    (package / "unused.py").write_text("")
    closure = import_closure("segpipe.a", package)
    assert [p.name for p in closure] == ["__init__.py", "a.py", "b.py", "c.py", "d.py"]


def _state(seed: int) -> resume.TrainingState:
    from segpipe.data.dataset import build_transform

    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    augment = build_transform(8, augment=True, seed=seed)
    return resume.TrainingState(
        model, optimizer, scheduler, None, augment, torch.Generator().manual_seed(seed)
    )


def _outputs(folder: Path, text: str) -> tuple[Path, Path]:
    """A stand-in checkpoint and DVCLive history holding ``text``."""
    model, live = folder / "model.pt", folder / "live"
    (live / "plots").mkdir(parents=True, exist_ok=True)
    model.write_text(text)
    (live / "plots" / "loss.tsv").write_text(text)
    return model, live


def test_snapshot_restores_into_fresh_objects(tmp_path):
    """One object knows the folder and the fingerprint: a snapshot restores model, optimizer,
    scheduler, every RNG, and the checkpoint and history that DVC deleted before the rerun;
    another run's fingerprint, or a finished run, starts over."""
    saved = _state(0)
    saved.model(torch.rand(4, 3)).sum().backward()
    saved.optimizer.step()
    saved.scheduler.step()
    model, live = _outputs(tmp_path / "outs", "epoch 2")
    snapshots = resume.Resume(tmp_path / "resume", "run-a")
    snapshots.snapshot(
        saved, epoch=2, best={"dice": 0.5, "epoch": 1}, model_path=model, live_dir=live
    )
    draws = (torch.rand(3), torch.randint(0, 100, (3,), generator=saved.generator))
    model.unlink()
    shutil.rmtree(live)

    fresh = _state(1)
    restored = snapshots.restore(fresh, epochs=4, model_path=model, live_dir=live)
    assert restored == ({"dice": 0.5, "epoch": 1}, 2)
    assert model.read_text() == "epoch 2" and (live / "plots" / "loss.tsv").read_text() == "epoch 2"
    assert torch.equal(fresh.model.weight, saved.model.weight)
    assert fresh.optimizer.state_dict()["state"][0]["step"] == 1
    assert fresh.scheduler.last_epoch == 1
    assert torch.equal(torch.rand(3), draws[0])
    assert torch.equal(torch.randint(0, 100, (3,), generator=fresh.generator), draws[1])

    other = resume.Resume(tmp_path / "resume", "run-b")
    assert other.restore(_state(2), epochs=4, model_path=model, live_dir=live) is None
    assert snapshots.restore(_state(3), epochs=2, model_path=model, live_dir=live) is None, (
        "all epochs done: start over"
    )
    snapshots.finish()
    assert list((tmp_path / "resume").iterdir()) == []


def test_other_runs_states_are_kept_newest_first(tmp_path):
    """Each parameter set has its own folder (going back to an interrupted run's parameters
    resumes it); beyond the newest KEEP_OTHERS of other runs, older folders are deleted."""
    model, live = _outputs(tmp_path / "outs", "x")
    runs = [resume.Resume(tmp_path / "resume", f"run-{i}") for i in range(resume.KEEP_OTHERS + 2)]
    for i, run_state in enumerate(runs):
        run_state.snapshot(_state(i), epoch=1, best={}, model_path=model, live_dir=live)
        os.utime(run_state.dir, (i, i))  # distinct ages, oldest first
    runs[-1].snapshot(_state(9), epoch=2, best={}, model_path=model, live_dir=live)
    kept = sorted(p.name for p in (tmp_path / "resume").iterdir())
    assert kept == [r.dir.name for r in runs[-1 - resume.KEEP_OTHERS :]]


def test_a_finished_run_deletes_what_a_kill_during_its_snapshot_left(tmp_path):
    """A kill while a snapshot is written leaves its staging folder beside the run's folder;
    the run, resumed and finished, deletes it with its state. Another run's are kept."""
    run, other = resume.Resume(tmp_path, "ab" * 32), resume.Resume(tmp_path, "cd" * 32)
    for each in (run, other):
        each.dir.mkdir()
        each.state_file.write_bytes(b"a state")
        torn = tmp_path / f".{each.dir.name}.k1ll3d" / "new"  # as staged_dir names it
        torn.mkdir(parents=True)
        (torn / resume.STATE).write_bytes(b"half a state")
    assert staging_leftovers(run.dir) == [tmp_path / f".{run.dir.name}.k1ll3d"]
    run.finish()
    assert sorted(tmp_path.iterdir()) == sorted([other.dir, *staging_leftovers(other.dir)])
    assert len(staging_leftovers(other.dir)) == 1
