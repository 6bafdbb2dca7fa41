"""Shared fixtures: tiny synthetic data for each test, and one tiny trained run for the tests
that only read it. Plain helpers live in ``helpers.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from segpipe.config import Params

from .helpers import reproduce_repo, tiny_params


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
    from segpipe.data.masks import RULE_FILE, load_rule
    from segpipe.model.geometry import Geometry

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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One run of the tiny settings, trained once for the whole session: ``raw/``,
    ``splits/``, ``cache/``, ``model.pt``, ``live/`` (the history) and ``best.json`` (what
    training returned; the finished run left no resume state). Tests only read it (checked
    at the end of the session); a test that must change something copies it first."""
    from segpipe.data import cache, split
    from segpipe.data.masks import RULE_FILE, load_rule
    from segpipe.data.synthetic import generate
    from segpipe.model.geometry import Geometry
    from segpipe.training import train

    root = tmp_path_factory.mktemp("tiny_run")
    p = tiny_params()
    generate(root / "raw", p.data.synthetic, p.seed)
    split.run(p.split, p.seed, root / "raw", root / "splits")
    rule = load_rule(root / "splits" / RULE_FILE, p.data)
    cache.run(root / "splits", root / "cache", Geometry.from_train(p.train), rule)
    best = train.run(p, root / "cache", root / "model.pt", root / "live", root / "resume")
    (root / "best.json").write_text(json.dumps(best))
    before = _listing(root)
    yield root
    assert _listing(root) == before, f"a test changed the shared tiny run in {root}"


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
    before = _listing(root)
    yield root, env, out
    assert _listing(root) == before, f"a test changed the shared reproduced repository {root}"
