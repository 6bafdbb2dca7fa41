"""Shared fixtures: tiny synthetic data for each test, and one tiny trained run for the tests
that only read it. Plain helpers live in ``helpers.py``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from segpipe.config import Params

from .helpers import (
    S3_BUCKET,
    TRAINING_THREADS,
    copy_reproduced,
    dvc,
    reproduce_repo,
    run,
    run_queue,
    s3_client,
    tiny_params,
    torch_threads,
)

USER_SETTINGS = ("HF_HUB_OFFLINE", "HF_ENDPOINT", "CUDA_VISIBLE_DEVICES")
"""Settings of the user's environment that the tests must not depend on. The tests that need
one set it themselves; the rest run as on a machine without them (CI sets them all to check)."""


def _clear_user_settings() -> None:
    """Drop proxies, Kaggle credentials and :data:`USER_SETTINGS` from the environment of the
    tests and the commands they start: every server the tests talk to is on loopback."""
    for name in list(os.environ):
        proxy = name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        if proxy or name.startswith("KAGGLE_") or name in USER_SETTINGS:
            del os.environ[name]


def pytest_configure(config: pytest.Config) -> None:
    """Clear the user's settings (:func:`_clear_user_settings`). On a pytest-xdist worker,
    share the cores between the workers: each worker's torch, and every command it runs, gets
    cores / workers threads (OpenMP threads of two processes that outnumber the cores spin
    against each other)."""
    _clear_user_settings()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


SHARED_REPOSITORY = "reproduced_template"
"""The session fixture that costs most (a real `dvc repro`)."""

SHARING_MODULES = (
    "tests/test_e2e.py",
    "tests/test_e2e_compare.py",
    "tests/test_e2e_pretrained.py",
    "tests/test_remote_s3.py",
)
"""The modules whose tests copy :data:`SHARED_REPOSITORY` (or ``experiments_template``, made
from it): pytest-xdist runs them on one worker, so that each is made once."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist (``-n auto`` in ``pyproject.toml``) hands out whole modules, so that each
    module's fixtures are built on one worker only, and :data:`SHARING_MODULES` as one unit, in
    the order collected (see below)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARING_MODULES[0] if module in SHARING_MODULES else module

    return ByModule(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that copy the reproduced repository first, then the other slow ones, then the
    rest: under pytest-xdist the longest units start first while the short ones fill the other
    workers. A test outside :data:`SHARING_MODULES` that copies the repository is an error here,
    so that the grouping cannot fall behind."""

    def rank(item: pytest.Item) -> int:
        if SHARED_REPOSITORY in item.fixturenames:
            module = item.nodeid.split("::", 1)[0]
            assert module in SHARING_MODULES, f"add {module} to conftest.SHARING_MODULES"
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


@pytest.fixture
def params() -> Params:
    return tiny_params()


@pytest.fixture
def raw_dir(tmp_path: Path, params: Params) -> Path:
    """A tiny synthetic dataset in the layout the download stage writes."""
    from segpipe.data.synthetic import generate

    out = tmp_path / "raw"
    generate(out, params.data.synthetic, params.seed)
    return out


@pytest.fixture
def splits_dir(tmp_path: Path, raw_dir: Path, params: Params) -> Path:
    from segpipe.data import split

    out = tmp_path / "splits"
    split.run(params.split, params.seed, raw_dir, out)
    return out


@pytest.fixture
def cache_dir(tmp_path: Path, splits_dir: Path, params: Params) -> Path:
    from segpipe.data import cache
    from segpipe.data.geometry import Geometry
    from segpipe.data.masks import RULE_FILE, load_rule

    out = tmp_path / "cache"
    rule = load_rule(splits_dir / RULE_FILE, params.data)
    cache.run(splits_dir, out, Geometry.from_train(params.train), rule)
    return out


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@contextlib.contextmanager
def _unchanged(root: Path, what: str) -> Iterator[None]:
    """Check, after the block, that no test changed a file or folder under ``root`` (``what``:
    the shared thing it holds, for the message)."""
    before = _listing(root)
    yield
    assert _listing(root) == before, f"a test changed {what} in {root}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One run of the tiny settings, trained once for the whole session: ``raw/``,
    ``splits/``, ``cache/``, ``model.pt``, ``live/`` (the history) and ``best.json`` (what
    training returned; the finished run left no resume state). Tests only read it (checked
    at the end of the session); a test that must change something copies it first."""
    from segpipe.data import cache, split
    from segpipe.data.geometry import Geometry
    from segpipe.data.masks import RULE_FILE, load_rule
    from segpipe.data.synthetic import generate
    from segpipe.training import train

    root = tmp_path_factory.mktemp("tiny_run")
    p = tiny_params()
    generate(root / "raw", p.data.synthetic, p.seed)
    split.run(p.split, p.split.seed, root / "raw", root / "splits")
    rule = load_rule(root / "splits" / RULE_FILE, p.data)
    cache.run(root / "splits", root / "cache", Geometry.from_train(p.train), rule)
    with torch_threads(TRAINING_THREADS):
        best = train.run(p, root / "cache", root / "model.pt", root / "live", root / "resume")
    (root / "best.json").write_text(json.dumps(best))
    with _unchanged(root, "the shared tiny run"):
        yield root


@pytest.fixture(scope="session")
def reproduced_template(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict, str]]:
    """A copied repository with the cut-down settings after one `dvc repro`, made once for the
    whole session: its root, environment and the output of that `dvc repro`. Tests never run
    in it (checked at the end of the session): each module takes its own copy
    (``copy_reproduced``)."""
    root = tmp_path_factory.mktemp("reproduced") / "repo"
    env, out = reproduce_repo(root)
    with _unchanged(root, "the shared reproduced repository"):
        yield root, env, out


SEED_EXPERIMENTS = {"seed1": 1, "seed2": 2}
"""The experiments of ``experiments_template`` and their seeds: the same change (another lr),
two training seeds."""


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port for the whole session, with one empty bucket
    (:data:`helpers.S3_BUCKET`): its endpoint URL."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def experiments_template(
    tmp_path_factory: pytest.TempPathFactory,
    reproduced_template: tuple[Path, dict, str],
    s3_server: str,
) -> Iterator[tuple[Path, dict]]:
    """A team's repository, made once for the whole session: the reproduced repository with its
    default DVC remote (``store``, the session's S3 bucket), committed and tagged ``v1``, with
    two experiments at another lr that differ only in ``seed`` (:data:`SEED_EXPERIMENTS`),
    queued and run by `dvc queue start` as the README says. Its root and environment. The tests
    of `segpipe compare` and of sharing experiments each copy it (``copy_reproduced``)."""
    template, env, _ = reproduced_template
    root = tmp_path_factory.mktemp("experiments") / "repo"
    copy_reproduced(template, root)
    # Before the experiments: DVC pushes a revision's outputs to the remote its own commit names.
    dvc(["remote", "add", "--default", "store", f"s3://{S3_BUCKET}/segpipe"], root, env)
    dvc(["remote", "modify", "store", "endpointurl", s3_server], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline"], root, env)
    run(["git", "tag", "v1"], root, env)
    for name, seed in SEED_EXPERIMENTS.items():
        args = ["-n", name, "-S", f"seed={seed}", "-S", "train.lr=0.01"]
        dvc(["exp", "run", "--queue", *args], root, env)
    status = run_queue(root, env, SEED_EXPERIMENTS)
    assert status.count("Success") == len(SEED_EXPERIMENTS) and "Failed" not in status, status
    with _unchanged(root, "the shared experiments repository"):
        yield root, env
