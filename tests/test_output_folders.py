"""No stage writes a folder over what it reads: every stage that writes a folder (download,
split, cache, evaluate's predictions, plot) refuses an output that is, holds or lies inside one
of its inputs, before any work, with one line naming both; nothing on disk changes. The check
command names a ``data.path`` inside a pipeline output, which DVC refuses without saying why;
``data/raw`` is no output, and a dataset there works with DVC."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from segpipe import check
from segpipe.data import cache, download, split
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.files import path_relation
from segpipe.reporting import plot
from segpipe.training import train

from .helpers import REPO, call, copy_repo, dvc, run, run_stage, tiny_params, write_params
from .test_bad_inputs import error_line, make_pairs, snapshot

RELATIONS = ("is", "holds", "lies inside")


def layout(tmp: Path) -> dict[str, Path]:
    """Every input of the stages, each alone in a folder of its own (so that its parent holds
    it and nothing else), and a split of a tiny dataset."""
    params = tiny_params()
    paths = {
        "data.path": make_pairs(tmp / "ext" / "dataset"),
        "--downloads": tmp / "dl" / "downloads",
        "--raw": make_pairs(tmp / "d" / "raw"),
        "--splits": tmp / "s" / "splits",
        "--model": tmp / "m" / "model.pt",
        "--predictions": tmp / "p" / "predictions",
        "--live": tmp / "l" / "live",
        "--per-image": tmp / "t" / "per_image.csv",
        "--cache": tmp / "c" / "cache",
    }
    split.run(params.split, params.seed, paths["--raw"], paths["--splits"])
    paths["--test"] = paths["--splits"] / "test.csv"
    paths["the dataset"] = paths["--raw"]
    paths["--downloads"].mkdir(parents=True)
    for folder in ("--predictions", "--live", "--cache"):
        paths[folder].mkdir(parents=True)
        (paths[folder] / "kept.txt").write_text("kept")
    for file in ("--model", "--per-image"):
        paths[file].parent.mkdir(parents=True)
        paths[file].write_text("kept")
    return paths


def stage_runs(paths: dict[str, Path]) -> dict[str, Callable[[Path], object]]:
    """Each folder-writing stage as a call with its output folder as the argument."""
    params = tiny_params()
    folder = dataclasses.replace(params.data, source="folder", path=str(paths["data.path"]))
    kaggle = dataclasses.replace(params.data, source="kaggle")
    rule = load_rule(paths["--splits"] / RULE_FILE)
    return {
        "download": lambda out: download.run(folder, params.seed, out),
        "download-kaggle": lambda out: download.run(kaggle, 0, out, paths["--downloads"]),
        "split": lambda out: split.run(params.split, params.seed, paths["--raw"], out),
        "cache": lambda out: cache.run(
            paths["--splits"], out, Geometry.from_train(params.train), rule
        ),
        "evaluate": lambda out: evaluate.run(
            params,
            paths["--model"],
            paths["--splits"],
            out.parent / "metrics.json",
            out.parent / "per_image.csv",
            out,
        ),
        "train --live": lambda out: train.run(
            params, paths["--cache"], paths["--model"], out, out.parent / "resume"
        ),
        "train --resume": lambda out: train.run(
            params, paths["--cache"], paths["--model"], out.parent.parent / "other-live", out
        ),
        "plot": lambda out: plot.run(
            params.plot,
            paths["--test"],
            paths["--per-image"],
            paths["--predictions"],
            paths["--live"],
            out,
            rule,
        ),
    }


INPUTS = {
    "download": ("data.path",),
    "download-kaggle": ("--downloads",),
    "split": ("--raw",),
    "cache": ("--splits", "the dataset"),
    "evaluate": ("--splits", "--model", "the dataset"),
    "plot": ("--test", "--per-image", "--predictions", "--live", "the dataset"),
    "train --live": ("--cache", "--model"),
    "train --resume": ("--cache", "--model"),
}
CASES = [
    (stage, name, relation)
    for stage, names in INPUTS.items()
    for name in names
    for relation in RELATIONS
    if not (relation == "lies inside" and name in ("--model", "--per-image", "--test"))
]


def output_for(path: Path, relation: str) -> Path:
    return {"is": path, "holds": path.parent, "lies inside": path / "out"}[relation]


@pytest.mark.parametrize(("stage", "name", "relation"), CASES)
def test_an_output_over_an_input_is_refused_and_nothing_changes(tmp_path, stage, name, relation):
    paths = layout(tmp_path)
    out = output_for(paths[name], relation)
    assert path_relation(out, paths[name]) == relation
    before = snapshot(tmp_path)
    option = {"evaluate": "--predictions", "train --live": "--live"}.get(stage, "--out")
    option = "--resume" if stage == "train --resume" else option
    with pytest.raises(SegpipeError) as caught:
        stage_runs(paths)[stage](out)
    message = str(caught.value)
    assert message.startswith(f"{option} {out.as_posix()}: "), message
    assert f"{relation} {name}" in message or (relation == "is" and f"is {name}" in message)
    assert f"choose a folder for {option} apart from the stage's inputs" in message
    assert snapshot(tmp_path) == before


def test_the_download_script_refuses_an_out_equal_to_data_path(tmp_path):
    dataset = make_pairs(tmp_path / "export")
    (dataset / "annotations.json").write_text("{}")
    params = write_params(tmp_path / "params.yaml", data__source="folder", data__path=str(dataset))
    before = snapshot(tmp_path)
    result = run_stage("download.py", "--params", params, "--out", dataset, check=False)
    error_line(result, f"--out {dataset.as_posix()}", "is data.path itself")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("data_path", "relation", "out"),
    [
        ("data/imported", "is", "data/imported"),
        ("data/imported/coco", "lies inside", "data/imported"),
        ("data", "holds", "data/imported"),
        ("data/cache/x", "lies inside", "data/cache"),
        ("data/splits/x", "lies inside", "data/splits"),
        ("plots", "is", "plots"),
    ],
)
def test_check_names_a_data_path_inside_a_pipeline_output(tmp_path, data_path, relation, out):
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = write_params(tmp_path / "params.yaml", data__source="folder", data__path=data_path)
    with pytest.raises(SegpipeError) as caught:
        check.check_data_path(check.load_params(params).data, tmp_path / "dvc.yaml")
    assert str(caught.value).startswith(f"data.path: {data_path} {relation} {out}, the output")
    assert "such as data/raw/<name> (the place for your own files)" in str(caught.value)


@pytest.mark.parametrize("data_path", ["data/external", "data/raw", "data/raw/coco"])
def test_check_accepts_a_data_path_apart_from_the_outputs(tmp_path, data_path):
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = write_params(tmp_path / "params.yaml", data__source="folder", data__path=data_path)
    check.check_data_path(check.load_params(params).data, tmp_path / "dvc.yaml")


@pytest.mark.slow
def test_a_dataset_in_data_raw_works_with_dvc(tmp_path):
    """data/raw is the user's, as in most projects: `dvc add` of a dataset there keeps only its
    .dvc file in git, `segpipe check` passes and `dvc repro download` imports it into
    data/imported. Inside data/imported, DVC refuses the pipeline and the check names why."""
    root = tmp_path / "repo"
    env = copy_repo(root, {"data__source": "folder", "data__path": "data/raw/mine"})
    make_pairs(root / "data" / "raw" / "mine")
    dvc(["add", "data/raw/mine"], root, env)
    run(["git", "add", "-A"], root, env)
    tracked = run(["git", "ls-files", "data/raw"], root, env).stdout.split()
    assert tracked == ["data/raw/mine.dvc"]
    assert call(check.main, "--params", root / "params.yaml", cwd=root).returncode == 0
    assert "Running stage 'download'" in dvc(["repro", "download"], root, env)
    imported = sorted(p.name for p in (root / "data" / "imported" / "images").iterdir())
    assert imported == sorted(p.name for p in (root / "data" / "raw" / "mine" / "images").iterdir())

    write_params(root / "params.yaml", data__source="folder", data__path="data/imported/mine")
    refused = dvc(["repro", "--dry"], root, env, check=False)
    assert "Same item(s) are defined as both a dependency and an output" in refused
    result = call(check.main, "--params", root / "params.yaml", cwd=root)
    error_line(result, "data.path: data/imported/mine lies inside data/imported", "data/raw")
