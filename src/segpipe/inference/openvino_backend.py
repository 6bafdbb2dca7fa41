"""The OpenVINO inference backend (``evaluate.backend: openvino``, ``segpipe predict --backend``).

OpenVINO folds batch norms, fuses activations into the convolutions and picks its own CPU
kernels (how it compares with PyTorch's path: BENCHMARKS.md, the backends benchmark). The network
is converted from the checkpoint's PyTorch model when the predictor loads (a few seconds, no
file written), compiled for the CPU in the checkpoint's precision (bf16 where PyTorch would
autocast to bf16, else fp32), and checked against PyTorch on one random batch before use.
Only the forward pass moves: resizing, padding, tiles, TTA and thresholds stay segpipe's, so
predict and evaluate still write the same masks for the same settings.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Callable

import torch
from torch import nn

from segpipe.config import Backend
from segpipe.errors import SegpipeError, install_extra
from segpipe.model import outputs
from segpipe.runtime import Runtime

BACKENDS: tuple[str, ...] = typing.get_args(Backend)
MAX_LABEL_MISMATCH = 0.01
"""Parity: the share of pixels whose label may differ from PyTorch's on one random batch
(bf16 against bf16 differs on a few pixels; a wrong conversion on most)."""


def compile_openvino(
    model: nn.Module, runtime: Runtime, image_size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (eval mode) as an OpenVINO function of (N, 3, H, W) inputs, any N, H and W
    (multiples of the network's stride), returning float32 logits.

    Raises:
        SegpipeError: OpenVINO is not installed, the device is not the CPU, or the compiled
            network disagrees with PyTorch.
    """
    if runtime.device.type != "cpu":
        raise SegpipeError(
            f"backend openvino: runs on the CPU, not {runtime.device}; use backend torch there"
        )
    try:
        import openvino as ov
    except ImportError:
        raise SegpipeError(
            f"backend openvino: the openvino package is not installed ({install_extra('openvino')})"
            ", or use backend torch"
        ) from None
    model = model.eval()
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter traces with torch.jit, which warns
        converted = ov.convert_model(model, example_input=example)
    converted.reshape([-1, 3, -1, -1])
    precision = "bf16" if runtime.dtype == torch.bfloat16 else "f32"
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    compiled = ov.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()

    def forward(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.detach().float().contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    check_parity(forward, model, runtime, image_size)
    return forward


def check_parity(
    forward: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    runtime: Runtime,
    image_size: int,
) -> float:
    """The share of pixels of one random batch whose label differs between ``forward`` and
    PyTorch's path (:func:`~segpipe.model.outputs.check_parity`); an error above
    :data:`MAX_LABEL_MISMATCH`."""

    def reference(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), runtime.autocast():
            return model(runtime.to_device(x)).float()

    shapes = [(2, 3, image_size, image_size)]
    parity = outputs.check_parity(forward, reference, shapes, what="backend openvino")
    mismatch = parity.label_mismatch_fraction
    if not mismatch <= MAX_LABEL_MISMATCH:
        raise SegpipeError(
            f"backend openvino: labels differ from PyTorch's on {mismatch:.1%} of the pixels "
            f"of a random batch (at most {MAX_LABEL_MISMATCH:.0%}); use backend torch"
        )
    return mismatch
