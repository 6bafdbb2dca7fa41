"""The real `dvc status` and `dvc repro` with weights files and split lists: the folders they
live in are stage dependencies, whatever the params say (null, a hub name, a file)."""

from __future__ import annotations

import pytest
import torch
import yaml

from .helpers import copy_reproduced, dvc, set_keys

pytestmark = pytest.mark.slow


def edit_params(root, **edits: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(set_keys(params, edits), sort_keys=False))


def save_encoder(path, seed: int) -> None:
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), path)


def test_weights_file_and_split_lists_are_dependencies(tmp_path, reproduced_template):
    template, env, _ = reproduced_template
    root = tmp_path / "repo"
    copy_reproduced(template, root)
    assert "up to date" in dvc(["status"], root, env)  # encoder_weights: null

    save_encoder(root / "weights" / "encoder.pth", seed=0)
    edit_params(root, model__encoder_weights="weights/encoder.pth")
    status = dvc(["status", "train"], root, env)
    assert "modified:           weights" in status, status
    out = dvc(["repro", "train"], root, env)
    assert "encoder weights: " in out and "weights/encoder.pth" in out, out
    assert "up to date" in dvc(["status", "train"], root, env)

    save_encoder(root / "weights" / "encoder.pth", seed=1)  # the same name, other weights
    assert "modified:           weights" in dvc(["status", "train"], root, env)

    edit_params(root, model__encoder_weights="imagenet")  # a hub name: no file, no error
    status = dvc(["status", "train"], root, env)
    assert "modified:           model" in status and "ERROR" not in status, status

    stems = sorted(line.split(",")[0] for line in (root / "data/splits/train.csv").open())
    stems = [s for s in stems if s != "stem"]
    lists = root / "data" / "lists"
    (lists / "train.txt").write_text("\n".join(stems[:-2]) + "\n")
    (lists / "test.txt").write_text("\n".join(stems[-2:]) + "\n")
    edit_params(
        root,
        split__lists={"train": "data/lists/train.txt", "test": "data/lists/test.txt", "val": None},
    )
    assert "modified:           data/lists" in dvc(["status", "split"], root, env)
    out = dvc(["repro", "split"], root, env)
    report = (root / "data" / "splits" / "report.md").read_text()
    assert "Split: the split lists: train data/lists/train.txt" in report, out
