"""DVC remotes on S3, as teams use them: a real S3 API (moto's server on loopback, fake
credentials from the environment, no network), `dvc push`/`pull` through it, and experiments
shared with `dvc exp push`/`pull` between two clones of one git remote."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import collect_runs, copy_reproduced, dvc, run

pytestmark = pytest.mark.slow

BUCKET = "segpipe-store"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Fake credentials, read from the environment as DVC reads real ones."""


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with one empty bucket: its endpoint URL."""
    server_module = pytest.importorskip("moto.server")
    import boto3

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def stored_keys(endpoint: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, s3, reproduced_template) -> tuple[Path, dict[str, str]]:
    """A copy of the session's reproduced repository (the cut-down settings: a 2.2M-parameter
    encoder, small checkpoints to push and pull) whose default remote is the S3 bucket, set up
    as the README says, committed; its environment has the credentials and no proxy."""
    template, env, _ = reproduced_template
    root = tmp_path_factory.mktemp("s3") / "repo"
    copy_reproduced(template, root)
    env = {k: v for k, v in env.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    env = {**env, **CREDENTIALS, "NO_PROXY": "127.0.0.1,localhost"}
    dvc(["remote", "add", "--default", "store", f"s3://{BUCKET}/segpipe"], root, env)
    dvc(["remote", "modify", "store", "endpointurl", s3], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "reproduced, with an S3 remote"], root, env)
    return root, env


def test_push_wipe_pull_is_up_to_date(repo, s3):
    root, env = repo
    dvc(["push"], root, env)
    assert any(key.startswith("segpipe/files/md5/") for key in stored_keys(s3))
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
    """A runs an experiment and `dvc exp push`es it; B, a clone of the same git remote,
    `dvc exp pull`s it: B's `dvc exp show` lists it with A's metrics, and applying it checks
    out A's model, fetched from S3."""
    root, env = repo
    origin = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", root, origin], tmp_path, env)
    run(["git", "remote", "add", "origin", origin], root, env)
    dvc(["exp", "run", "-n", "lr-low", "-S", "train.lr=0.0005"], root, env)
    ran = experiments(json.loads(dvc(["exp", "show", "--json"], root, env)))
    model = (root / "models" / "model.pt").read_bytes()
    dvc(["exp", "push", "origin", "lr-low"], root, env)

    clone = tmp_path / "b"
    run(["git", "clone", "-q", origin, clone], tmp_path, env)
    assert "lr-low" not in dvc(["exp", "list", "--all-commits"], clone, env)
    dvc(["exp", "pull", "origin", "lr-low"], clone, env)
    seen = experiments(json.loads(dvc(["exp", "show", "--json"], clone, env)))
    assert seen["lr-low"] == ran["lr-low"]
    dvc(["exp", "apply", "lr-low"], clone, env)
    assert (clone / "models" / "model.pt").read_bytes() == model
    assert "lr: 0.0005" in (clone / "params.yaml").read_text()
