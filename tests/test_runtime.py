"""The runtime value: device, autocast precision and memory layout, travelling as one."""

from __future__ import annotations

import pytest
import torch

from segpipe.runtime import Runtime, pick_device

CPU = torch.device("cpu")


def test_choose_resolves_the_precision_on_the_device():
    fp32 = Runtime.choose("fp32", channels_last=False, device=CPU)
    assert fp32 == Runtime(CPU, None, channels_last=False)
    assert Runtime.choose("bf16", channels_last=True, device=CPU).dtype == torch.bfloat16
    assert Runtime.choose("fp16", channels_last=True, device=CPU).dtype == torch.float16
    assert Runtime.choose("fp32", channels_last=False).device == pick_device()


def test_channels_last_is_keyword_only():
    with pytest.raises(TypeError):
        Runtime(CPU, None, True)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Runtime.choose("fp32", True)  # type: ignore[misc]


def test_batches_and_models_follow_the_memory_layout():
    batch = torch.rand(2, 3, 8, 8)
    nhwc = Runtime(CPU, None, channels_last=True)
    assert nhwc.to_device(batch).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nhwc.to_device(batch), batch)
    assert Runtime(CPU, None, channels_last=False).to_device(batch).is_contiguous()
    conv = nhwc.place(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_autocast_only_when_a_dtype_is_set():
    x = torch.rand(4, 4)
    with Runtime(CPU, torch.bfloat16, channels_last=False).autocast():
        assert (x @ x).dtype == torch.bfloat16
    with Runtime(CPU, None, channels_last=False).autocast():
        assert (x @ x).dtype == torch.float32


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_grad_scaler_only_for_fp16_on_cuda():
    assert Runtime(CPU, torch.float16, channels_last=False).grad_scaler() is None
    cuda = Runtime(torch.device("cuda"), torch.float16, channels_last=False)
    assert isinstance(cuda.grad_scaler(), torch.amp.GradScaler)
    assert Runtime(torch.device("cuda"), torch.bfloat16, channels_last=False).grad_scaler() is None


def test_pick_device_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == CPU and pick_device(1) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    assert pick_device(1) == torch.device("cuda", 1)
