"""The predict command reproduces evaluate's masks and scores, at each input's own size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from segpipe import evaluate, train
from segpipe.dataset import read_split
from segpipe.masks import RULE_FILE, MaskRule, load_rule
from segpipe.metrics import SegmentationMetrics

from .conftest import REPO


@pytest.fixture
def model_path(tmp_path, params, cache_dir):
    train.run(params, cache_dir, tmp_path / "model.pt", tmp_path / "live")
    return tmp_path / "model.pt"


def predict_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "predict.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_predict_reproduces_evaluate_exactly(tmp_path, params, splits_dir, model_path):
    scores = evaluate.run(
        params,
        model_path,
        splits_dir,
        tmp_path / "eval.json",
        tmp_path / "per_image.csv",
        tmp_path / "eval_pred",
    )
    test = read_split(splits_dir / "test.csv")
    inputs = tmp_path / "new_images"
    inputs.mkdir()
    for image in test["image"]:
        shutil.copy2(image, inputs)
    (inputs / "broken.png").write_bytes(b"")  # unreadable: reported and skipped
    (inputs / "notes.txt").write_text("not an image")  # ignored

    result = predict_cmd(
        "--model",
        str(model_path),
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "out"),
        "--overlay",
        "--batch-size",
        "4",
    )
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.png" in result.stderr

    metrics = SegmentationMetrics(2)
    for _, row in test.iterrows():
        mask_file = tmp_path / "out" / f"{row['stem']}.png"
        assert (
            mask_file.read_bytes() == (tmp_path / "eval_pred" / f"{row['stem']}.png").read_bytes()
        )
        pred = MaskRule.predictions(2).read(mask_file)
        assert pred.shape == (row["height"], row["width"])  # the input's own resolution
        truth = load_rule(splits_dir / RULE_FILE).read(row["mask"])
        metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
        assert Image.open(tmp_path / "out" / f"{row['stem']}_overlay.png").size == (
            row["width"],
            row["height"],
        )
    assert metrics.compute()["dice"] == scores["dice"]  # exactly, not approximately
    assert json.loads((tmp_path / "eval.json").read_text())["dice"] == scores["dice"]
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert len(names) == 2 * len(test) and not any(n.startswith(".") for n in names)


def test_predict_single_file_and_errors(tmp_path, splits_dir, model_path):
    image = read_split(splits_dir / "test.csv")["image"][0]
    result = predict_cmd(
        "--model", str(model_path), "--input", image, "--output", str(tmp_path / "one")
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "one").iterdir())) == 1

    missing = predict_cmd(
        "--model",
        str(model_path),
        "--input",
        str(tmp_path / "nope"),
        "--output",
        str(tmp_path / "x"),
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("nope: no such file or folder")
    bad_model = predict_cmd(
        "--model", str(tmp_path / "none.pt"), "--input", image, "--output", str(tmp_path / "x")
    )
    assert bad_model.returncode == 1
    assert "none.pt: checkpoint not found" in bad_model.stderr
    assert "Traceback" not in bad_model.stderr
