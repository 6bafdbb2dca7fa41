"""train -> evaluate -> plot in-process on tiny data, and the stage scripts' error handling."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.data.tables import read_split, read_table
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate, postprocess
from segpipe.evaluation.fingerprint import file_sha256
from segpipe.metrics import counts_of_table, dataset_scores
from segpipe.model.checkpoint import load_checkpoint
from segpipe.reporting import plot
from segpipe.training import train

from .helpers import REPO, TRAINING_THREADS, run_stage, torch_threads


@pytest.fixture
def trained(tmp_path, tiny_run):
    """The session's tiny run: its checkpoint and history copied here, where a test may write
    beside them, and what training returned."""
    shutil.copy2(tiny_run / "model.pt", tmp_path / "model.pt")
    shutil.copytree(tiny_run / "live", tmp_path / "live")
    return tmp_path, json.loads((tiny_run / "best.json").read_text())


def test_train_writes_checkpoint_and_history(trained, params):
    out, best = trained
    model, meta = load_checkpoint(out / "model.pt")
    assert meta.model_config.classes == tuple(params.data.classes)
    assert meta.model_config.image_size == 64
    assert meta.epoch == best["epoch"] == 1
    assert 0.0 <= meta.val_dice == best["dice"] <= 1.0
    history = out / "live" / "plots" / "metrics"
    for name in ("train/loss", "val/loss", "val/dice", "val/iou", "val/pixel_accuracy", "lr"):
        frame = pd.read_csv(history / f"{name}.tsv", sep="\t")
        assert list(frame["step"]) == [0]
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["lr"] == pytest.approx(params.train.lr)
    assert summary["val"]["dice"] == pytest.approx(best["dice"])
    perf = summary["perf"]
    assert perf["epoch_seconds"] > 0 and perf["train_images_per_s"] > 0
    assert 50 < perf["peak_rss_mb"] < 20_000


def test_training_is_reproducible(tmp_path, params, cache_dir, trained):
    """Training again, on a cache built again, gives the session's tiny run exactly."""
    out, a = trained
    with torch_threads(TRAINING_THREADS):
        b = train.run(params, cache_dir, tmp_path / "b.pt", tmp_path / "live_b")
    assert a == b
    sa = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_postprocess_auto_scores_with_and_without(trained, params, splits_dir):
    """The rule chosen on val is applied to the written predictions, and the test scores
    without it are those of evaluating with no post-processing."""
    out, _ = trained
    runs = {}
    for name in ("none", "auto"):
        cfg = dataclasses.replace(params.evaluate, postprocess=name)
        p = dataclasses.replace(params, evaluate=cfg)
        files = [out / f"{name}.{ext}" for ext in ("json", "csv")]
        runs[name] = evaluate.run(
            p, out / "model.pt", splits_dir, *files, out / name, out / "card.md"
        )
    plain, auto = runs["none"], runs["auto"]
    card = (out / "card.md").read_text()
    assert f"without it, Dice {auto['dice_without_postprocess']:.4f}" in card
    assert auto["dice_without_postprocess"] == pytest.approx(plain["dice"])
    assert auto["dice_per_image_without_postprocess"] == pytest.approx(plain["dice_per_image"])
    by_name = {r.describe(): r for r in (postprocess.NO_RULE, *postprocess.CANDIDATES)}
    chosen = by_name[auto["postprocess/foreground"]]
    if chosen == postprocess.NO_RULE:
        assert auto["dice"] == plain["dice"]
    else:
        assert auto["val_dice_with_postprocess"] > auto["val_dice_without_postprocess"]
    for path in sorted((out / "none").iterdir()):
        raw = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        written = (np.asarray(Image.open(out / "auto" / path.name)) > 0).astype(np.uint8)
        assert (postprocess.apply(raw, {1: chosen}) == written).all()


def test_evaluate_and_plot(trained, params, splits_dir):
    out, _ = trained
    metrics = evaluate.run(
        params,
        out / "model.pt",
        splits_dir,
        out / "eval.json",
        out / "per_image.csv",
        out / "pred",
        out / "card.md",
        out / "sweep.csv",
        out / "confusion.csv",
        out / "test_set.json",
    )
    written = json.loads((out / "eval.json").read_text())
    assert written == pytest.approx(metrics)
    for name in ("dice", "iou", "precision", "recall"):  # flat per-class keys
        assert f"{name}/foreground" in written and f"{name}/background" in written
        assert written[name] == pytest.approx(written[f"{name}/foreground"])  # no background
    # The validation sweep: its best threshold is reported, the headline stays at 0.5.
    sweep = pd.read_csv(out / "sweep.csv")
    assert list(sweep.columns) == ["threshold", "precision", "recall", "dice", "iou"]
    assert len(sweep) == 99 and sweep["dice"].between(0, 1).all()
    best = sweep.loc[sweep["dice"].idxmax()]
    assert written["val_best_threshold"] == pytest.approx(best["threshold"])
    assert written["val_best_threshold_dice"] == pytest.approx(best["dice"], abs=5e-7)  # 6 places
    # Confusion rows for DVC's template: 1000 per true class, in proportion to the pixels.
    confusion = pd.read_csv(out / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"]
    assert confusion["actual"].value_counts().to_dict() == {"background": 1000, "foreground": 1000}
    fg_rows = confusion[confusion["actual"] == "foreground"]
    assert (fg_rows["predicted"] == "foreground").mean() == pytest.approx(
        written["recall/foreground"], abs=1e-3
    )
    for key in ("dice", "iou", "pixel_accuracy", "dice_per_image", "iou_per_image"):
        assert 0.0 <= written[key] <= 1.0
    assert written["n_images"] == 6 and written["threshold"] == 0.5
    for name in ("dice", "iou"):
        assert written[f"{name}_ci95_low"] <= written[name] <= written[f"{name}_ci95_high"]
    # Boundary metrics: the foreground's alone, at the configured tolerance.
    assert written["boundary_tolerance"] == params.evaluate.boundary_tolerance
    assert written["nsd"] == written["nsd/foreground"] and 0 <= written["nsd"] <= 1
    assert written["hd95"] == written["hd95/foreground"] and "hd95/background" not in written
    assert written["hd95_n_infinite"] >= 0 and "postprocess/foreground" not in written

    card = (out / "card.md").read_text()
    assert "# Model card: Unet / tu-mobilenetv3_small_050" in card
    assert "train 12, val 6, test 6 images" in card
    assert (
        f"| Dice (dataset-level) | {written['dice']:.4f} | {written['dice_ci95_low']:.4f}" in card
    )
    assert "dvc exp run -S 'seed=42' -S 'data.source=synthetic'" in card
    assert "-S 'data.classes=[background, foreground]'" in card
    assert "-S 'train.lr=0.001'" in card and "-S 'model.encoder_weights=null'" in card
    per_image = read_table(out / "per_image.csv", ("stem",), "per-image scores", "")
    test = read_split(splits_dir / "test.csv")
    assert list(per_image["stem"]) == list(test["stem"])
    assert per_image["dice"].mean() == pytest.approx(written["dice_per_image"])
    assert per_image["nsd/foreground"].mean() == pytest.approx(written["nsd/foreground"], abs=1e-6)
    assert (per_image["hd95"] == math.inf).sum() == written["hd95_n_infinite"]
    assert "| HD95, pixels (mean over images) |" in card
    # The per-image counts give back the dataset-level scores, as compare resamples them.
    counts = counts_of_table(per_image, ["background", "foreground"]).sum(axis=0)
    assert dataset_scores(counts, first=1)["dice"] == pytest.approx(written["dice"])
    # The fingerprint: each test stem with the hashes of its image and mask files.
    test_set = json.loads((out / "test_set.json").read_text())
    assert sorted(test_set["images"]) == sorted(test["stem"]) and test_set["n_images"] == 6
    first = test.sort_values("stem").iloc[0]
    assert test_set["images"][first["stem"]]["mask"] == file_sha256(Path(first["mask"]))
    for _, row in test.iterrows():  # predictions come back at each image's own size
        pred = Image.open(out / "pred" / f"{row['stem']}.png")
        assert pred.size == (row["width"], row["height"])
        assert set(pred.getdata()) <= {0, 255}

    plot.run(
        params.plot,
        splits_dir / "test.csv",
        out / "per_image.csv",
        out / "pred",
        out / "live",
        out / "plots",
        load_rule(splits_dir / RULE_FILE, params.data),
    )
    for name in ("predictions.png", "worst.png", "dice_histogram.png", "training_curves.png"):
        image = Image.open(out / "plots" / name)
        assert image.size[0] > 300 and image.size[1] > 200


def test_stage_script_errors_are_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("lr: 0.001", "lr: -1"))
    result = run_stage(
        "split.py", "--params", bad, "--raw", tmp_path, "--out", tmp_path / "s", check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: train.lr: must be > 0, got -1.0"
    assert not (tmp_path / "s").exists()


def test_non_finite_loss_stops_training_and_keeps_the_best(
    tmp_path, params, cache_dir, monkeypatch
):
    """A NaN loss used to train on, exit 0 and save a NaN model as the best."""
    p = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=3))
    real_build_loss = train.build_loss

    def nan_from_epoch_2(*args, **kwargs):
        loss_fn, calls = real_build_loss(*args, **kwargs), [0]

        def loss(logits, masks):
            value = loss_fn(logits, masks)
            if torch.is_grad_enabled():  # training batches only, 3 per epoch
                calls[0] += 1
                return value * float("nan") if calls[0] > 3 else value
            return value

        return loss

    monkeypatch.setattr(train, "build_loss", nan_from_epoch_2)
    model, resume_dir = tmp_path / "model.pt", tmp_path / "resume"
    with pytest.raises(SegpipeError) as error:
        train.run(p, cache_dir, model, tmp_path / "live", resume_dir)
    message = str(error.value)
    assert message.startswith("train: the loss is nan at batch 1 of 3 in epoch 2; training stopped")
    assert f"{model} keeps the best epoch so far (1, val dice" in message
    assert torch.load(model, weights_only=True)["epoch"] == 1
    (state,) = resume_dir.glob("*/state.pt")  # kept: the failed run can be resumed
    assert torch.load(state, weights_only=True)["epoch"] == 1


def test_a_last_batch_of_one_image_is_dropped(tmp_path, params, cache_dir):
    """DeepLabV3Plus's image pooling cannot train batch norm on a single image: a train split
    of 12 with batch size 11 failed with "Expected more than 1 value per channel"."""
    p = dataclasses.replace(
        params,
        model=dataclasses.replace(params.model, arch="DeepLabV3Plus"),
        train=dataclasses.replace(params.train, batch_size=11),
    )
    best = train.run(p, cache_dir, tmp_path / "model.pt", tmp_path / "live")
    assert best["epoch"] == 1 and 0.0 <= best["dice"] <= 1.0
