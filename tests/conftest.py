"""Shared fixtures: the real params.yaml cut down to tiny, fast, offline settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from segpipe.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


def tiny_params(**train_overrides: object) -> Params:
    """The repository's params.yaml with tiny data and one short epoch."""
    p = load_params(REPO / "params.yaml")
    synthetic = dataclasses.replace(p.data.synthetic, n_images=24, min_size=48, max_size=80)
    train = dataclasses.replace(p.train, image_size=64, epochs=1, batch_size=4, **train_overrides)
    model = dataclasses.replace(p.model, encoder="resnet18", encoder_weights=None)
    return dataclasses.replace(
        p,
        data=dataclasses.replace(p.data, synthetic=synthetic),
        model=model,
        train=train,
        split=dataclasses.replace(p.split, val_fraction=0.25, test_fraction=0.25),
        plot=dataclasses.replace(p.plot, n_samples=2),
    )


def write_params(path: Path, params: Params) -> Path:
    """Write ``params`` as a params.yaml file that stage scripts read."""
    import yaml

    from segpipe.config import to_dict

    path.write_text(yaml.safe_dump(to_dict(params)))
    return path


def train_args(params_file: Path, cache_dir: Path, out: Path) -> list[str]:
    """The train stage script and its arguments, with every output under ``out``."""
    return [
        str(REPO / "stages" / "train.py"),
        "--params",
        str(params_file),
        "--cache",
        str(cache_dir),
        "--model",
        str(out / "model.pt"),
        "--live",
        str(out / "live"),
        "--resume",
        str(out / "resume.pt"),
    ]


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

    out = tmp_path / "cache"
    from segpipe.data.masks import RULE_FILE, load_rule

    rule = load_rule(splits_dir / RULE_FILE, params.data)
    cache.run(splits_dir, out, params.train.image_size, rule)
    return out
