"""The model factory, offline behaviour, and self-describing checkpoints."""

from __future__ import annotations

import dataclasses
import pickle
import time

import pytest
import torch

from segpipe.config import ModelConfig
from segpipe.errors import SegpipeError
from segpipe.model import build_model, load_checkpoint, save_checkpoint

TINY = ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=None)


@pytest.mark.parametrize(("num_classes", "channels"), [(2, 1), (4, 4)])
def test_output_shape(num_classes, channels):
    model = build_model(TINY, num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, channels, 64, 64)


def test_default_architecture_builds():
    model = build_model(ModelConfig("Unet", "efficientnet-b3", None), 2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_unknown_names_list_valid_values():
    with pytest.raises(
        SegpipeError, match=r"model.arch: unknown architecture 'Unett' \(valid: .*unet"
    ):
        build_model(dataclasses.replace(TINY, arch="Unett"), 2)
    with pytest.raises(SegpipeError, match=r"model.encoder: unknown encoder 'resnet19'.*resnet18"):
        build_model(dataclasses.replace(TINY, encoder="resnet19"), 2)


def test_pretrained_weights_offline_fail_fast_with_one_line(tmp_path, monkeypatch):
    # An endpoint that refuses connections at once, and an empty local cache.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(SegpipeError) as err:
        build_model(dataclasses.replace(TINY, encoder_weights="imagenet"), 2)
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "\n" not in message
    assert "model.encoder_weights" in message and "encoder_weights: null" in message


def test_checkpoint_round_trip(tmp_path):
    model = build_model(TINY, 2).eval()
    config = {"arch": "Unet", "encoder": "resnet18", "classes": ["bg", "fg"], "image_size": 64}
    save_checkpoint(tmp_path / "m.pt", model, config, epoch=3, val_dice=0.5)
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["model_config"] == config and meta["epoch"] == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "no temporary files left"


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('pwned').write_text('x')",))


def test_malicious_checkpoint_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": 1, "x": Payload()}))
    with pytest.raises(SegpipeError, match="evil.pt: not a loadable segpipe checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(SegpipeError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
