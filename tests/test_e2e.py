"""End to end: the real `dvc repro`, `dvc exp run -S` and `dvc metrics diff` in a fresh repo.

The repository is copied (the files git would commit) into a temporary git repository and run
with cut-down params, exactly as a user would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .helpers import copy_reproduced, dvc, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, reproduced_template) -> tuple[Path, dict[str, str], str]:
    """This module's copy of the session's reproduced repository (the cut-down settings, three
    epochs): its root, environment and the output of the `dvc repro` that reproduced it."""
    template, env, out = reproduced_template
    root = tmp_path_factory.mktemp("e2e") / "repo"
    copy_reproduced(template, root)
    return root, env, out


@pytest.fixture(scope="module")
def repo(reproduced) -> tuple[Path, dict[str, str]]:
    return reproduced[:2]


def edit_module(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def ran(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran, in order."""
    return re.findall(r"Running stage '([\w-]+)'", output)


def test_pipeline_experiment_and_metrics_diff(reproduced, repo):
    root, env, out = reproduced

    # 1. The whole pipeline (its `dvc repro` made the session's reproduced repository).
    for stage in ("download", "split", "train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    for key in ("dice", "iou", "pixel_accuracy", "dice_per_image", "iou_per_image"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_images"] == 6
    assert (root / "plots" / "predictions.png").stat().st_size > 0
    assert (root / "models" / "model.pt").stat().st_size > 0
    assert len(list((root / "data" / "predictions").iterdir())) == 6

    # 1b. `dvc plots show` writes a page that needs no network: Vega is inlined, not a CDN link.
    dvc(["plots", "show"], *repo)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    assert "vegaEmbed" in page and page.count("vegaEmbed(") >= 6  # the 6 DVCLive curves, at least

    # 1c. Training logged its validation images every epoch where DVCLive puts them, and
    # `dvc plots show` lists them (a DVC-cached plot output of the train stage).
    shown = json.loads(dvc(["plots", "show", "--json"], *repo))
    logged = [f"metrics/train/plots/images/val/{step}.png" for step in range(3)]
    assert all((root / path).is_file() for path in logged)
    assert [p for p in shown["data"] if "/images/" in p] == logged
    assert not shown.get("errors")
    for name in ("predictions.png", "worst.png", "dice_histogram.png", "training_curves.png"):
        assert name in page

    # 2. Nothing changed: nothing runs.
    assert "Running stage" not in dvc(["repro"], *repo)
    first = (root / "metrics" / "evaluate.json").read_bytes()

    # 2b. Kill `dvc repro` during training of new params: the next `dvc repro` resumes from
    # the saved epoch (that a resumed run ends as an uninterrupted one does is
    # tests/test_resume.py's). The resume state lives outside DVC's outputs (a finished run
    # leaves none) and is never pushed.
    states = root / ".segpipe" / "resume"
    assert not list(states.glob("*/state.pt"))
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("lr: 0.001", "lr: 0.002"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(states.glob("*/state.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (state,) = states.glob("*/state.pt")
    saved = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= saved < 3
    assert ".segpipe" not in run(["git", "status", "--porcelain"], root, env).stdout  # ignored
    remote = root.parent / "resume-check-remote"
    dvc(["remote", "add", "check", remote], *repo)
    dvc(["push", "-r", "check"], *repo)
    pushed = {p.name for p in remote.rglob("*") if p.is_file()}
    digest = hashlib.md5(state.read_bytes()).hexdigest()  # noqa: S324 - DVC's content address
    assert pushed and digest[2:] not in pushed, "the resume state is never pushed"
    dvc(["remote", "remove", "check"], *repo)
    out = dvc(["repro"], *repo)
    assert f"resuming after epoch {saved}/3" in out
    assert list(states.iterdir()) == [], "the finished run deleted its resume state"

    # 2c. Back at the first params, DVC's run cache restores that model: no training.
    (root / "params.yaml").write_text(params)
    out = dvc(["repro"], *repo)
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert "epoch 1/3" not in out
    assert (root / "metrics" / "evaluate.json").read_bytes() == first

    # 3. A plot parameter puts only the plot stage out of date (`dvc repro` runs what `dvc status`
    # lists: the code edits below run it).
    (root / "params.yaml").write_text(params.replace("n_samples: 2", "n_samples: 1"))
    status = dvc(["status", "--json"], *repo)
    assert sorted(json.loads(status)) == ["check", "plot"]  # check reads the whole file
    (root / "params.yaml").write_text(params)

    # 3b. A code edit reruns only the stages whose scripts import the edited module.
    edit_module(root / "src/segpipe/reporting/plot.py")
    assert sorted(json.loads(dvc(["status", "--json"], *repo))) == ["plot"]
    assert ran(dvc(["repro"], *repo)) == ["plot"]
    edit_module(root / "src/segpipe/model/network.py")
    assert sorted(json.loads(dvc(["status", "--json"], *repo))) == ["check", "evaluate", "train"]
    # plot follows: train's history records this run's timings, so metrics/train changed.
    assert set(ran(dvc(["repro"], *repo))) == {"check", "train", "evaluate", "plot"}
    # Training again from scratch at the first params reproduces the metrics byte for byte.
    assert (root / "metrics" / "evaluate.json").read_bytes() == first

    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline"], root, env)
    baseline = json.loads((root / "metrics" / "evaluate.json").read_text())

    # 4. An experiment with lr written the way DVC writes it (1e-05, a string to PyYAML).
    out = dvc(["exp", "run", "-S", "train.lr=1e-5"], *repo)
    assert "Running stage 'train'" in out and "Running stage 'download'" not in out
    assert "lr: 1e-05" in (root / "params.yaml").read_text()
    live = json.loads((root / "metrics" / "train" / "metrics.json").read_text())
    assert live["lr"] == pytest.approx(1e-5)  # what the optimizer really used, as a float

    # 5. dvc metrics diff compares the experiment with the baseline commit.
    diff = json.loads(dvc(["metrics", "diff", "--json"], *repo))
    entry = diff["metrics/evaluate.json"]["dice"]
    assert entry["old"] == pytest.approx(baseline["dice"])
    new = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert entry["new"] == pytest.approx(new["dice"])
    assert "iou/foreground" in diff["metrics/evaluate.json"]  # per-class keys, flat
    assert "metrics/train/metrics.json" in diff

    # 6. dvc exp show lists the experiment with its params and metrics.
    shown = json.loads(dvc(["exp", "show", "--json"], *repo))
    text = json.dumps(shown)
    assert "1e-05" in text or "1e-5" in text
    assert '"dice"' in text


# The pipeline's plots: 6 DVCLive curves (train/loss, val/loss, val/dice, val/iou,
# val/pixel_accuracy, lr), precision-recall, Dice vs threshold and the confusion matrix; the
# prediction grid, worst-case gallery, Dice histogram and training-curve images; and training's
# validation images of its three epochs.
VEGA_CHARTS, IMAGES = 9, 4 + 3


def test_plots_page_renders_in_a_browser(repo):
    """`dvc plots show` and `dvc plots diff` pages open offline in headless Chromium with no
    console errors, and every chart and image renders."""
    from .browser import find_chromium, render_page

    if find_chromium() is None:
        pytest.skip("no Chromium found (install the chromium package or set CHROMIUM)")
    root, _ = repo
    dvc(["plots", "show", "--out", "shown"], *repo)
    report = render_page(root / "shown" / "index.html")
    assert report.errors == []
    assert report.charts == VEGA_CHARTS and report.images == IMAGES
    assert report.broken_images == []

    # The workspace against the last commit: every plot once per revision, side by side.
    dvc(["plots", "diff", "HEAD", "--out", "diffed"], *repo)
    report = render_page(root / "diffed" / "index.html")
    assert report.errors == []
    assert report.charts == VEGA_CHARTS and report.images == 2 * IMAGES
    assert report.broken_images == []


def test_remote_push_pull_round_trip(repo, tmp_path):
    """Push to a local-directory remote, lose cache and outputs, pull: all up to date."""
    root, env = repo
    remote = tmp_path / "remote"
    dvc(["remote", "add", "--default", "store", str(remote)], *repo)
    dvc(["push"], *repo)
    assert any(p.is_file() for p in remote.rglob("*"))
    shutil.rmtree(root / ".dvc" / "cache")
    outs = (
        "data/imported",
        "data/splits",
        "data/cache",
        "data/predictions",
        "models/model.pt",
    )
    for out in outs:
        path = root / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    dvc(["pull"], *repo)
    assert (root / "models" / "model.pt").is_file()
    assert len(list((root / "data" / "imported" / "images").iterdir())) == 24
    out = dvc(["repro"], *repo)
    assert "Running stage" not in out and "up to date" in out


def test_multiclass_experiment_as_the_readme_says(repo):
    """The README's multi-class try-out: one `dvc exp run -S data.classes=[...]` reruns the
    pipeline from download, and every metric and plot follows the classes."""
    root, _ = repo
    out = dvc(["exp", "run", "-S", "data.classes=[background,ellipse,box,triangle,blob]"], *repo)
    assert "Running stage 'download'" in out
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    for name in ("ellipse", "box", "triangle", "blob"):
        assert f"iou/{name}" in metrics and f"dice/{name}" in metrics
    assert "val_best_threshold" not in metrics
    actual = {line.split(",")[0] for line in (root / "metrics" / "confusion.csv").open()}
    assert "background" in actual and len(actual - {"actual"}) >= 3

    from .browser import find_chromium, render_page

    if find_chromium() is not None:
        dvc(["plots", "show", "--out", "multiclass"], *repo)
        report = render_page(root / "multiclass" / "index.html")
        assert report.errors == []
        assert report.charts == VEGA_CHARTS and report.images == IMAGES
