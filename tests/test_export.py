"""ONNX export through the real stage script: dynamic axes, metadata, parity figures, errors."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from segpipe.commands import export
from segpipe.config import ModelConfig
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.errors import SegpipeError
from segpipe.model.checkpoint import Checkpoint, ModelSpec, load_checkpoint, save_checkpoint
from segpipe.model.network import build_model
from segpipe.model.outputs import logits_to_labels

from .helpers import call, run_stage

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOLERANCE = 1e-3
# id: (encoder, classes, opset). 17 goes through the TorchScript exporter, 18 through
# torch.export; three classes exercise the argmax (multi-channel) path.
CASES = {
    "resnet18-opset17": ("resnet18", ["background", "person"], 17),
    "efficientnet-b0-opset17": ("efficientnet-b0", ["background", "cat", "dog"], 17),
    "resnet18-opset18": ("resnet18", ["background", "person"], 18),
}


@dataclass
class Exported:
    folder: Path
    result: subprocess.CompletedProcess[str]
    model_config: dict
    opset: int

    @property
    def onnx(self) -> Path:
        return self.folder / "model.onnx"


def tiny_checkpoint(
    path: Path, encoder: str = "resnet18", classes: list[str] | None = None
) -> dict:
    """A randomly initialised Unet checkpoint; returns its model_config."""
    classes = classes or ["background", "foreground"]
    torch.manual_seed(0)
    model = build_model(ModelConfig("Unet", encoder, None), len(classes))
    spec = ModelSpec(
        arch="Unet",
        encoder=encoder,
        classes=tuple(classes),
        image_size=64,
        precision="fp32",
        channels_last=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize="longest_side",  # inputs of any aspect: the graph's height and width are free
    )
    record = Checkpoint(model_config=spec, epoch=1, val_dice=0.5, train_images_per_s=1.0)
    save_checkpoint(path, model, record)
    return spec.to_dict()


def export_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    """``python stages/export.py ARGS``, the real script (the exports below)."""
    return run_stage("export.py", *args, check=False)


def export_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The same through ``export.main`` in this process, for the one-line errors."""
    return call(export.main, *args)


QUICK = "resnet18-opset17"
"""The case the fast tests export, through ``export.main`` in this process; torch.export
(opset 18) and the larger encoder take several seconds more each, so their cases run with the
slow tests, the first through the real stage script (its start and imports once are enough)."""
REAL_SCRIPT = "efficientnet-b0-opset17"


@pytest.fixture(
    scope="module",
    params=[pytest.param(case, marks=() if case == QUICK else pytest.mark.slow) for case in CASES],
)
def exported(request, tmp_path_factory) -> Exported:
    encoder, classes, opset = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    config = tiny_checkpoint(folder / "model.pt", encoder, classes)
    export_with = export_cmd if request.param == REAL_SCRIPT else export_in_process
    result = export_with(
        "--model",
        str(folder / "model.pt"),
        "--out",
        str(folder / "model.onnx"),
        "--opset",
        str(opset),
        "--check-size",
        "128",
    )
    return Exported(folder, result, config, opset)


def test_stage_writes_onnx_and_figures(exported):
    assert exported.result.returncode == 0, exported.result.stderr
    assert re.search(
        rf"exported \S*model\.onnx \(opset {exported.opset}, [\d.]+ MB\); onnxruntime parity: "
        r"max \|diff\| \S+ over 2 inputs, labels (identical|differ on)",
        exported.result.stderr,
    ), exported.result.stderr
    report = json.loads(exported.onnx.with_name("model.onnx.json").read_text())
    assert report["opset"] == exported.opset
    assert report["inputs_checked"] == [[1, 3, 128, 128], [2, 3, 64, 192]]
    assert 0 <= report["max_abs_diff"] <= TOLERANCE
    assert 0 <= report["label_mismatch_fraction"] <= 1e-3
    assert report["file_size_bytes"] == exported.onnx.stat().st_size
    import onnx

    proto = onnx.load(str(exported.onnx), load_external_data=False)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [
        exported.opset
    ]
    assert sorted(p.name for p in exported.folder.iterdir()) == [
        "model.onnx",
        "model.onnx.json",
        "model.pt",
    ]


def test_onnx_has_dynamic_axes_and_matches_pytorch(exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == (
        "image",
        "tensor(float)",
        ["batch", 3, "height", "width"],
    )
    assert out.name == "logits"
    model, _ = load_checkpoint(exported.folder / "model.pt")
    x = torch.randn(3, 3, 96, 160, generator=torch.Generator().manual_seed(1))  # not checked
    with torch.inference_mode():
        expected = model(x)
    got = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    channels = 1 if len(exported.model_config["classes"]) == 2 else 3
    assert got.shape == expected.shape == (3, channels, 96, 160)
    assert (got - expected).abs().max().item() <= TOLERANCE
    labels_differ = logits_to_labels(got, 0.5) != logits_to_labels(expected, 0.5)
    assert labels_differ.float().mean().item() <= 1e-3


def test_metadata_describes_the_model(exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["model_config"]) == exported.model_config
    pre = json.loads(meta["preprocessing"])
    assert (pre["mean"], pre["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert (pre["mean"], pre["std"]) == (
        exported.model_config["mean"],
        exported.model_config["std"],
    )
    assert pre["size_multiple"] == 32
    assert json.loads(meta["model_config"])["resize"] == "longest_side"
    assert "longest_side" in meta["geometry"] and "pad below and to the right" in meta["geometry"]
    assert meta["inference"] == export.OUTSIDE_GRAPH_NOTE  # tiles and TTA: not in the graph
    report = json.loads(exported.onnx.with_name("model.onnx.json").read_text())
    assert report["inference"] == export.OUTSIDE_GRAPH_NOTE


def test_metadata_carries_the_checkpoints_normalisation(exported, tmp_path):
    """A model trained with its encoder's own mean/std tells the deployer those values."""
    import onnxruntime as ort

    _, record = load_checkpoint(exported.folder / "model.pt")
    spec = dataclasses.replace(record.model_config, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    copy = tmp_path / "model.onnx"
    shutil.copyfile(exported.onnx, copy)
    export.add_metadata(copy, spec, 32, exported.opset, 0.5)
    meta = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    pre = json.loads(meta.get_modelmeta().custom_metadata_map["preprocessing"])
    assert (pre["mean"], pre["std"]) == ([0.5] * 3, [0.5] * 3)
    assert pre["size_multiple"] == 32


def test_bad_checkpoint_path_is_a_one_line_error(tmp_path):
    result = export_in_process("--model", tmp_path / "missing.pt", "--out", tmp_path / "m.onnx")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "missing.pt: checkpoint not found" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_and_bad_options(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SegpipeError, match="junk.pt: not a loadable segpipe checkpoint"):
        export.run(tmp_path / "junk.pt", tmp_path / "m.onnx")
    with pytest.raises(SegpipeError, match=r"--opset: must be 17\.\.23, got 16"):
        export.run(tmp_path / "junk.pt", tmp_path / "m.onnx", opset=16)
    tiny_checkpoint(tmp_path / "model.pt")
    with pytest.raises(SegpipeError, match="--check-size: must be a positive multiple of 32"):
        export.run(tmp_path / "model.pt", tmp_path / "m.onnx", check_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "model.pt"]


def test_parity_failure_writes_nothing(tmp_path):
    tiny_checkpoint(tmp_path / "model.pt")
    with pytest.raises(
        SegpipeError, match=r"max \|diff\| \S+ > tolerance 1e-12 \(label mismatch .*\); not written"
    ):
        export.run(tmp_path / "model.pt", tmp_path / "m.onnx", check_size=64, tolerance=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(SegpipeError) as err:
        export.run(tmp_path / "model.pt", tmp_path / "m.onnx")
    message = str(err.value)
    assert "\n" not in message
    assert "needs onnxruntime" in message and "pip install -e '.[export]'" in message


def test_out_that_must_not_or_cannot_be_written(tmp_path):
    tiny_checkpoint(tmp_path / "model.pt")
    (tmp_path / "resume.pt").write_bytes(b"training state")
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken.onnx.json").mkdir()
    cases = {
        "model.pt": "model.pt: the --model checkpoint itself; choose another --out",
        "resume.pt": "resume.pt: an existing file that is not .onnx, so export does not replace "
        "it; choose another --out (ending in .onnx)",
        "folder": "folder: a folder, where --out needs the ONNX file to write (and <out>.json "
        f"beside it); choose another --out, e.g. {tmp_path / 'folder' / 'model.onnx'}",
        "taken.onnx": "taken.onnx.json: a folder, where --out needs the ONNX file to write",
        "model.pt/m.onnx": "model.pt: an existing file, where --out needs a folder; choose "
        "another --out",
    }
    for out, message in cases.items():
        with pytest.raises(SegpipeError) as err:
            export.run(tmp_path / "model.pt", tmp_path / out)
        assert str(err.value).startswith(f"{tmp_path / message}"), str(err.value)
    assert (tmp_path / "resume.pt").read_bytes() == b"training state"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "folder",
        "model.pt",
        "resume.pt",
        "taken.onnx.json",
    ]


def test_resume_state_as_model_is_one_line(tmp_path):
    torch.save({"format": 1, "fingerprint": "x", "epoch": 2, "optimizer": {}}, tmp_path / "r.pt")
    result = export_in_process("--model", tmp_path / "r.pt", "--out", tmp_path / "m.onnx")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'r.pt'}: a training-resume state (saved after each epoch to continue "
        "an interrupted run), not a model checkpoint; use the train stage's checkpoint, "
        "models/model.pt"
    )


def test_full_disk_during_export_writes_nothing(tmp_path, monkeypatch):
    tiny_checkpoint(tmp_path / "model.pt")

    def full(model, path, opset, example):
        Path(path).write_bytes(b"half an onnx file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "export_onnx", full)
    with pytest.raises(SegpipeError) as err:
        export.run(tmp_path / "model.pt", tmp_path / "m.onnx", check_size=64)
    assert str(err.value) == (
        f"{tmp_path / 'm.onnx'}: cannot write (no space left on device); nothing was written; "
        "free some space and run again"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_weights_are_refused_before_export_naming_the_tensor(tmp_path, value):
    tiny_checkpoint(tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["state_dict"]["decoder.blocks.0.conv1.0.weight"].view(-1)[5] = value
    torch.save(payload, tmp_path / "model.pt")
    result = export_in_process("--model", tmp_path / "model.pt", "--out", tmp_path / "m.onnx")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: {tmp_path / 'model.pt'}: tensor 'decoder.blocks.0.conv1.0.weight' holds 1 NaN "
            "or infinite value(s)"
        )
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_recorded_threshold_is_the_one_predict_uses(tmp_path):
    tiny_checkpoint(tmp_path / "model.pt")
    (tmp_path / "params.yaml").write_text(
        "evaluate: {threshold: 0.3, batch_size: 16, include_background: false, tile: null,\n"
        "  overlap: 0.25, tta: none, decode: exact, backend: torch, boundary_tolerance: 2,\n"
        "  postprocess: none, ensemble: null}\n"
    )
    args = ["--model", "model.pt", "--check-size", "64"]
    result = call(export.main, *args, "--out", "a.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "threshold 0.3 (evaluate section of params.yaml" in result.stderr
    assert json.loads((tmp_path / "a.onnx.json").read_text())["threshold"] == 0.3
    result = call(export.main, *args, "--out", "b.onnx", "--threshold", "0.7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b.onnx.json").read_text())["threshold"] == 0.7
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert json.loads(meta["threshold"]) == 0.7
