"""The model factory, offline behaviour, and self-describing checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch

from segpipe.config import ModelConfig
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.errors import SegpipeError
from segpipe.model.checkpoint import Checkpoint, ModelSpec, load_checkpoint, save_checkpoint
from segpipe.model.network import build_model

TINY = ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=None)
SPEC = ModelSpec(
    arch="Unet",
    encoder="resnet18",
    classes=("bg", "fg"),
    image_size=64,
    precision="fp32",
    channels_last=False,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)


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
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SegpipeError) as err:
        build_model(dataclasses.replace(TINY, encoder_weights="imagenet"), 2)
    message = str(err.value)
    assert "\n" not in message
    assert "model.encoder_weights" in message and "encoder_weights: null" in message


def test_checkpoint_round_trip(tmp_path):
    model = build_model(TINY, 2).eval()
    record = Checkpoint(model_config=SPEC, epoch=3, val_dice=0.5, train_images_per_s=12.5)
    save_checkpoint(tmp_path / "m.pt", model, record)
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta == record and meta.model_config == SPEC and meta.epoch == 3
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


def _patched_depthwise(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.modules() if "forward" in vars(m)]


def test_slow_depthwise_convolutions_train_in_fp32_under_cpu_autocast():
    torch.manual_seed(0)
    model = build_model(ModelConfig("Unet", "efficientnet-b0", None), 2)
    patched = _patched_depthwise(model)
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and 1 < m.groups == m.in_channels
    ]
    # Exactly the 5x5 or strided depthwise convolutions; 3x3 stride-1 ones stay as they are.
    assert patched == [m for m in depthwise if m.kernel_size == (5, 5) or max(m.stride) == 2]
    assert 0 < len(patched) < len(depthwise)

    conv = next(m for m in patched if max(m.stride) == 2)  # with explicit "same" padding
    x = torch.randn(2, conv.in_channels, 16, 16).bfloat16()
    plain = type(conv).forward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = conv(x)
    fp32_reference = plain(conv, x.float()).bfloat16()  # outside autocast
    assert trained.dtype == torch.bfloat16
    assert torch.equal(trained, fp32_reference)
    # Inference keeps the bf16 convolution.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(conv(x), plain(conv, x))


def test_depthwise_fp32_changes_nothing_without_autocast():
    torch.manual_seed(0)
    patched = build_model(ModelConfig("Unet", "efficientnet-b0", None), 2)
    torch.manual_seed(0)
    plain = build_model(ModelConfig("Unet", "efficientnet-b0", None), 2)
    for m in _patched_depthwise(plain):
        del m.forward
    assert patched.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(2, 3, 64, 64)
    outs = []
    for model in (patched, plain):
        torch.manual_seed(1)  # the same drop-connect draws
        out = model.train()(x)
        out.sum().backward()
        outs.append((out, model.encoder._conv_stem.weight.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    # A deep copy (e.g. for weight averaging) is a working model with the same output.
    copied = copy.deepcopy(patched).eval()
    with torch.no_grad():
        assert torch.equal(copied(x), patched.eval()(x))


def test_symmetric_same_padding_is_folded_into_the_convolution():
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    reference = smp.Unet("efficientnet-b0", encoder_weights=None, classes=1).eval()
    model = build_model(ModelConfig("Unet", "efficientnet-b0", None), 2).eval()
    model.load_state_dict(reference.state_dict())
    pads = [m.static_padding for m in model.modules() if hasattr(m, "static_padding")]
    explicit = [p for p in pads if isinstance(p, torch.nn.ZeroPad2d)]
    # Only the asymmetric "same" pads of strided convolutions remain explicit.
    assert explicit and len(explicit) < len(pads)
    assert all(p.padding[0] != p.padding[1] for p in explicit)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_hub_check_goes_through_huggingface_hub(monkeypatch):
    """The reachability check uses huggingface_hub's client (its proxies, endpoint, timeout and
    offline switch), not a raw socket."""
    import huggingface_hub
    from huggingface_hub import constants

    from segpipe.model import network as model_module

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # whatever the user's setting
    asked = []

    class Session:
        def head(self, url, timeout):
            asked.append((url, timeout))

    monkeypatch.setattr(huggingface_hub, "get_session", Session)
    monkeypatch.setattr(constants, "ENDPOINT", "https://mirror.example")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 4)
    assert model_module._hub_reachable() is True
    assert asked == [("https://mirror.example", 4)]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model_module._hub_reachable() is False and len(asked) == 1


def test_resume_state_and_mismatched_weights_are_named(tmp_path):
    torch.save(
        {"format": 1, "fingerprint": "abc", "epoch": 3, "model": {}, "optimizer": {}},
        tmp_path / "resume.pt",
    )
    with pytest.raises(SegpipeError) as err:
        load_checkpoint(tmp_path / "resume.pt")
    assert str(err.value) == (
        f"{tmp_path / 'resume.pt'}: a training-resume state (saved after each epoch to continue "
        "an interrupted run), not a model checkpoint; use the train stage's checkpoint, "
        "models/model.pt"
    )

    def record(**spec: object) -> Checkpoint:
        config = dataclasses.replace(SPEC, **spec)
        return Checkpoint(model_config=config, epoch=1, val_dice=0.5, train_images_per_s=1.0)

    save_checkpoint(tmp_path / "m.pt", build_model(TINY, 2), record(classes=("a", "b", "c")))
    with pytest.raises(SegpipeError) as err:
        load_checkpoint(tmp_path / "m.pt")
    assert str(err.value) == (
        f"{tmp_path / 'm.pt'}: its weights do not fit its model_config (Unet, resnet18, 3 "
        "classes): 0 missing, 0 unexpected and 2 wrongly shaped tensor(s); wrongly shaped "
        "'segmentation_head.0.weight' is 1x16x3x3, needs 3x16x3x3, 'segmentation_head.0.bias' "
        "is 1, needs 3; the file was altered or mixes two models, use the checkpoint the train "
        "stage wrote"
    )
    torch.save({"format": 1, "model_config": {"arch": "Unet"}, "state_dict": {}}, tmp_path / "n.pt")
    with pytest.raises(SegpipeError, match="n.pt: not a complete segpipe checkpoint"):
        load_checkpoint(tmp_path / "n.pt")
    save_checkpoint(tmp_path / "o.pt", build_model(TINY, 2), record(arch="Nope"))
    with pytest.raises(SegpipeError, match=r"o.pt: its model_config cannot be built: model.arch"):
        load_checkpoint(tmp_path / "o.pt")
