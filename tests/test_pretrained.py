"""Starting from weights files: encoder state dicts, ``model.init_from``, freezing the encoder,
and the smp export that ``smp.from_pretrained`` loads; on tiny models, offline."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from segpipe.commands import export
from segpipe.config import ModelConfig, Normalisation
from segpipe.errors import SegpipeError
from segpipe.model.checkpoint import load_checkpoint
from segpipe.model.network import build_model, encoder_normalisation
from segpipe.training import train
from segpipe.training.finetune import freeze_encoder, initialise

from .helpers import TRAINING_THREADS, call, tiny_params, torch_threads

TIMM = "mobilenetv3_small_050"
"""A tiny timm network (2.2M parameters with its Unet): its own state_dict is the file."""


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model(TIMM, pretrained=False).state_dict()


def tu(weights: str | None = None, **changes: object) -> ModelConfig:
    return ModelConfig("Unet", f"tu-{TIMM}", weights, **changes)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_timm_state_dict_file_loads_into_the_encoder(tmp_path, timm_state, suffix):
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(timm_state, str(path))
    else:  # the full network's, classifier included: the encoder leaves the head out
        torch.save(timm_state, path)
    model = build_model(tu(str(path)), 2)
    loaded = model.encoder.model.state_dict()
    assert all(torch.equal(loaded[k], timm_state[k]) for k in loaded)


def test_a_state_dict_without_the_head_or_batch_counts_loads(tmp_path, timm_state):
    kept = {
        k: v
        for k, v in timm_state.items()
        if not k.startswith(("classifier", "conv_head")) and "num_batches" not in k
    }
    torch.save({"state_dict": kept}, tmp_path / "e.pt")  # wrapped, as training scripts save
    model = build_model(tu(str(tmp_path / "e.pt")), 2)
    assert torch.equal(model.encoder.model.conv_stem.weight, timm_state["conv_stem.weight"])


def one_line_error(cfg: ModelConfig) -> str:
    with pytest.raises(SegpipeError) as err:
        build_model(cfg, 2)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_wrong_weights_file_names_the_first_mismatches(tmp_path, timm_state):
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    other = one_line_error(tu(str(tmp_path / "resnet.pth")))
    assert other.startswith(f"model.encoder_weights: {tmp_path / 'resnet.pth'} does not fit ")
    assert "missing 'conv_stem.weight', 'blocks.0.0.conv_dw.weight'" in other
    assert "unexpected 'conv1.weight', 'layer1.0.conv1.weight'" in other

    broken = dict(timm_state)
    broken["conv_stem.weight"] = broken["conv_stem.weight"][:8]
    del broken["bn1.bias"]
    torch.save(broken, tmp_path / "broken.pth")
    assert one_line_error(tu(str(tmp_path / "broken.pth"))).endswith(
        "1 missing, 0 unexpected and 1 wrongly shaped tensor(s); missing 'bn1.bias'; wrongly "
        "shaped 'conv_stem.weight' is 8x3x3x3, needs 16x3x3x3 (a state dict of this encoder in "
        "its own key names is needed, timm's for tu- encoders)"
    )
    assert "not found" in one_line_error(tu(str(tmp_path / "none.pth")))
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    assert "is not a loadable weights file" in one_line_error(tu(str(tmp_path / "junk.pt")))


def test_normalisation_param_overrides_the_encoders():
    assert encoder_normalisation(tu("weights/x.pth"))[0] != (0.5, 0.5, 0.5)
    half = Normalisation(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert encoder_normalisation(tu("weights/x.pth", normalisation=half)) == (half.mean, half.std)


def test_init_from_a_checkpoint_of_another_class_count(tiny_run):
    source, _ = load_checkpoint(tiny_run / "model.pt")
    encoder = tiny_params().model.encoder  # the tiny run's
    cfg = ModelConfig("Unet", encoder, None, init_from=str(tiny_run / "model.pt"))
    model = build_model(cfg, 3)
    initialise(model, cfg)
    got, want = model.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if "segmentation_head" not in k)
    assert got["segmentation_head.0.weight"].shape[0] == 3  # fresh head for 3 classes

    other = dataclasses.replace(cfg, encoder="resnet34")
    with pytest.raises(SegpipeError, match=f"is a Unet with encoder {encoder}, this run builds"):
        initialise(build_model(other, 2), other)


def test_freezing_keeps_the_encoder_weights(tiny_run):
    model, _ = load_checkpoint(tiny_run / "model.pt")
    model.train()
    freeze_encoder(model, frozen=True)
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.01)
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("encoder."))
    assert not torch.equal(
        before["decoder.blocks.0.conv1.0.weight"], after["decoder.blocks.0.conv1.0.weight"]
    )
    freeze_encoder(model, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


def test_training_from_a_checkpoint_with_a_frozen_first_epoch(
    tmp_path, tiny_run, cache_dir, caplog
):
    caplog.set_level("INFO")
    (tmp_path / "weights").mkdir()
    start = tmp_path / "weights" / "base.pt"
    start.write_bytes((tiny_run / "model.pt").read_bytes())
    p = tiny_params(epochs=2, freeze_encoder_epochs=1)
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, init_from=str(start)))
    with torch_threads(TRAINING_THREADS):
        train.run(
            p, cache_dir, tmp_path / "m.pt", tmp_path / "live", weights_dir=tmp_path / "weights"
        )
    assert f"initialised from {start}" in caplog.text
    assert "encoder frozen" in caplog.text and "encoder unfrozen" in caplog.text
    load_checkpoint(tmp_path / "m.pt")

    with pytest.raises(SegpipeError, match=r"model.init_from: .* is outside .*elsewhere/"):
        train.run(
            p, cache_dir, tmp_path / "m2.pt", tmp_path / "l2", weights_dir=tmp_path / "elsewhere"
        )
    with pytest.raises(SegpipeError, match=r"is the checkpoint this stage writes"):
        train.run(p, cache_dir, start, tmp_path / "l3", weights_dir=tmp_path / "weights")


def test_export_smp_loads_in_smp_with_the_same_logits(tmp_path, tiny_run):
    import segmentation_models_pytorch as smp

    out = tmp_path / "smp"
    args = ("--format", "smp", "--model", tiny_run / "model.pt", "--out", out, "--check-size", 64)
    result = call(export.main, *args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "segpipe.json",
    ]
    assert json.loads((out / "segpipe.json").read_text())["classes"] == ["background", "foreground"]
    model, _ = load_checkpoint(tiny_run / "model.pt")
    loaded = smp.from_pretrained(str(out)).eval()
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)

    cfg = ModelConfig("Unet", tiny_params().model.encoder, None, init_from=str(out))  # a start
    start = build_model(cfg, 2)
    initialise(start, cfg)
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in start.state_dict().items())

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    refused = call(
        export.main,
        "--format",
        "smp",
        "--model",
        tiny_run / "model.pt",
        "--out",
        tmp_path / "other",
    )
    assert refused.returncode == 1
    assert "holds other files (no smp config.json)" in refused.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
