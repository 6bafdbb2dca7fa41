"""DVC remotes on S3, as teams use them: a real S3 API (moto's server on loopback, fake
credentials from the environment, no network), `dvc push`/`pull` through it, and experiments
shared with `dvc exp push`/`pull` between two clones of one git remote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .helpers import S3_BUCKET, S3_CREDENTIALS, collect_runs, copy_reproduced, dvc, run, s3_client

pytestmark = pytest.mark.slow


def stored_keys(endpoint: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture
def repo(tmp_path, experiments_template) -> tuple[Path, dict[str, str]]:
    """A copy of the session's experiments repository (the cut-down settings: a 2.2M-parameter
    encoder, small checkpoints to push and pull; two experiments, seed1 and seed2), whose
    default remote is the session's S3 bucket, set up as the README says; its environment has
    the credentials and no proxy."""
    template, env = experiments_template
    root = tmp_path / "repo"
    copy_reproduced(template, root)
    env = {k: v for k, v in env.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    return root, {**env, **S3_CREDENTIALS, "NO_PROXY": "127.0.0.1,localhost"}


def test_push_wipe_pull_is_up_to_date(repo, s3_server):
    root, env = repo
    dvc(["push"], root, env)
    assert any(key.startswith("segpipe/files/md5/") for key in stored_keys(s3_server))
    model = (root / "models" / "model.pt").read_bytes()

    shutil.rmtree(root / ".dvc" / "cache")
    for out in (
        "data/imported",
        "data/splits",
        "data/cache",
        "data/predictions",
        "models/model.pt",
    ):
        path = root / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    dvc(["pull"], root, env)
    assert (root / "models" / "model.pt").read_bytes() == model
    out = dvc(["repro"], root, env)
    assert "Running stage" not in out and "Data and pipelines are up to date." in out


def experiments(shown: list) -> dict[str, float]:
    """Experiment name -> test dice, from `dvc exp show --json`."""
    return {name: dice for name, _, dice in collect_runs(shown) if name}


def test_experiments_shared_through_git_and_s3(repo, tmp_path):
    """A `dvc exp push`es an experiment it ran; B, a clone of the same git remote, `dvc exp
    pull`s it: B's `dvc exp show` lists it with A's metrics, and applying it checks out A's
    model of that experiment, fetched from S3."""
    root, env = repo
    origin = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", root, origin], tmp_path, env)
    run(["git", "remote", "add", "origin", origin], root, env)
    ran = experiments(json.loads(dvc(["exp", "show", "--json"], root, env)))
    pushed = dvc(["exp", "push", "origin", "seed1"], root, env)
    assert "Pushed experiment seed1" in pushed and " uploaded" in pushed, pushed  # and its outputs

    clone = tmp_path / "b"
    run(["git", "clone", "-q", origin, clone], tmp_path, env)
    assert "seed1" not in dvc(["exp", "list", "--all-commits"], clone, env)
    dvc(["exp", "pull", "origin", "seed1"], clone, env)
    seen = experiments(json.loads(dvc(["exp", "show", "--json"], clone, env)))
    assert seen["seed1"] == ran["seed1"] and "seed2" not in seen
    dvc(["exp", "apply", "seed1"], clone, env)
    baseline = (root / "models" / "model.pt").read_bytes()
    dvc(["exp", "apply", "seed1"], root, env)  # A's own model of the experiment
    model = (root / "models" / "model.pt").read_bytes()
    assert model != baseline and (clone / "models" / "model.pt").read_bytes() == model
    assert "lr: 0.01" in (clone / "params.yaml").read_text()
