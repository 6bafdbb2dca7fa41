"""The OpenVINO backend: the same labels as PyTorch within the parity bound, predict writes the
masks evaluate scored with it, and every way it can be refused is one clear line."""

from __future__ import annotations

import dataclasses
import shutil
import sys

import numpy as np
import pytest
import torch

from segpipe.commands import predict
from segpipe.config import ModelConfig
from segpipe.data.images import read_image
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.inference import openvino_backend
from segpipe.inference.predictor import Predictor
from segpipe.model.network import build_model
from segpipe.runtime import Runtime

pytest.importorskip("openvino")


@pytest.mark.slow  # converts and compiles the network (seconds)
def test_labels_match_pytorch_within_the_parity_bound(tiny_run):
    images = [read_image(p) for p in read_split(tiny_run / "splits" / "test.csv")["image"]]
    torch_labels = Predictor(tiny_run / "model.pt", device="cpu").predict(images)
    openvino = Predictor(tiny_run / "model.pt", device="cpu", backend="openvino")
    assert openvino.backend == "openvino"
    differ = total = 0
    for a, b, image in zip(openvino.predict(images), torch_labels, images, strict=True):
        assert a.shape == b.shape == image.shape[:2] and a.dtype == np.uint8
        differ, total = differ + int((a != b).sum()), total + a.size
    assert differ / total <= openvino_backend.MAX_LABEL_MISMATCH


@pytest.mark.slow  # converts and compiles the network twice
def test_predict_writes_the_masks_evaluate_scored_with_openvino(tmp_path, tiny_run, params):
    params = dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, backend="openvino")
    )
    splits = tiny_run / "splits"
    out = tmp_path / "eval_pred"
    evaluate.run(
        params, tiny_run / "model.pt", splits, tmp_path / "e.json", tmp_path / "p.csv", out
    )
    inputs = tmp_path / "photos"
    inputs.mkdir()
    test = read_split(splits / "test.csv")
    for image in test["image"]:
        shutil.copy2(image, inputs)
    predict.run(
        tiny_run / "model.pt", inputs, tmp_path / "masks", batch_size=16, backend="openvino"
    )
    for stem in test["stem"]:
        assert (tmp_path / "masks" / f"{stem}.png").read_bytes() == (
            out / f"{stem}.png"
        ).read_bytes()


def test_refusals_are_one_line(tiny_run, monkeypatch):
    model = build_model(ModelConfig("Unet", "resnet18", None), 2).eval()
    gpu = Runtime(torch.device("cuda"), None, channels_last=False)
    with pytest.raises(SegpipeError, match="^backend openvino: runs on the CPU, not cuda"):
        openvino_backend.compile_openvino(model, gpu, 64)
    cpu = Runtime(torch.device("cpu"), None, channels_last=False)
    with pytest.raises(SegpipeError, match=r"labels differ from PyTorch's on \d+\.\d% of the"):
        openvino_backend.check_parity(lambda x: -model(x), model, cpu, 64)
    with pytest.raises(SegpipeError, match="^backend: must be one of torch, openvino, got 'onnx'"):
        Predictor(tiny_run / "model.pt", device="cpu", backend="onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    missing = r"openvino package is not installed \(install segpipe\[openvino\] \(in a clone: pip"
    with pytest.raises(SegpipeError, match=missing) as e:
        openvino_backend.compile_openvino(model, cpu, 64)
    assert "\n" not in str(e.value)
