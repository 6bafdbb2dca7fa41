"""The inference backends benchmark: the model alone, as segpipe runs it and the alternatives.

    python -m benchmarks backends [--image-size 256] [--eval-batch-size 16] [--batches 4] \\
        [--repeats 3]

In one process, in interleaved rounds, on the same random-weight model and the same input
batch (inference is as fast for random weights as for learnt ones):

- ``torch``: what ``predict`` and ``evaluate`` run (``Predictor``: bf16 autocast where the CPU
  has native bf16, channels-last);
- ``torch folded``: the same with every batch norm folded into the convolution before it;
- ``torch fp32``: no autocast, channels-last;
- ``openvino``: ``evaluate.backend: openvino`` (:mod:`segpipe.inference.openvino_backend`: the
  network converted and compiled for the CPU in bf16 where PyTorch autocasts to bf16);
- ``onnxruntime``: the model exported as ``segpipe export`` exports it (opset 17), run by
  onnxruntime's CPU provider with all graph optimisations (which fold batch norms too).

Each backend's logits are compared with fp32 PyTorch's: a backend is only worth having if it
is both faster and gives the same masks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from segpipe.config import ModelConfig
from segpipe.inference.folding import fold_batch_norms
from segpipe.model.network import build_model
from segpipe.runtime import Runtime, reuse_freed_memory

BACKENDS = ("torch", "torch folded", "torch fp32", "openvino", "onnxruntime")


def _timed(fn: Callable[[], torch.Tensor], batches: int) -> float:
    """Seconds per call of ``fn`` over ``batches`` calls, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    return (time.perf_counter() - start) / batches


def backends(args: argparse.Namespace, work: Path) -> tuple[dict[str, Callable], dict]:
    """A function per backend that computes float32 logits of the one batch, and facts."""
    torch.manual_seed(0)
    size, n = args.image_size, args.eval_batch_size
    x = torch.randn(n, 3, size, size)
    base = build_model(ModelConfig("Unet", args.encoder, None), 2).eval()
    fast = Runtime.choose("auto", channels_last=True, device=torch.device("cpu"))
    fp32 = Runtime.choose("fp32", channels_last=True, device=torch.device("cpu"))

    def on(runtime: Runtime, model: nn.Module) -> Callable[[], torch.Tensor]:
        placed = runtime.place(model)
        inputs = runtime.to_device(x)

        def run() -> torch.Tensor:
            with torch.inference_mode(), runtime.autocast():
                return placed(inputs).float()

        return run

    folded, n_folded = fold_batch_norms(base, x[:1])
    runs = {
        "torch": on(fast, base),
        "torch folded": on(fast, folded),
        "torch fp32": on(fp32, base),
    }
    from segpipe.inference.openvino_backend import compile_openvino

    compiled = compile_openvino(base, fast, size)
    runs["openvino"] = lambda: compiled(x)
    import onnxruntime as ort

    from segpipe.commands.export import INPUT_NAME, OUTPUT_NAME, export_onnx

    path = work / "model.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    exported = build_model(ModelConfig("Unet", args.encoder, None), 2)
    exported.load_state_dict(base.state_dict())  # the same weights as the other backends
    export_onnx(exported.eval(), path, 17, x[:1])
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    array = x.numpy()
    runs["onnxruntime"] = lambda: torch.from_numpy(
        session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
    )
    facts = {"dtype": str(fast.dtype), "batch_norms_folded": n_folded}
    facts["threads"] = torch.get_num_threads()
    return runs, facts


def main(args: argparse.Namespace) -> dict:
    """Interleaved rounds of every backend; images/s and the largest logit difference to fp32
    PyTorch, and how many pixels' labels (threshold 0.5) differ from it."""
    reuse_freed_memory()
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
        runs, facts = backends(args, Path(tmp))
        reference = runs["torch fp32"]()
        agreement = {}
        for name, run in runs.items():
            out = run()
            labels = (out > 0) != (reference > 0)  # sigmoid(z) > 0.5 is z > 0
            agreement[name] = {
                "max_abs_logit_diff": (out - reference).abs().max().item(),
                "label_mismatch": labels.float().mean().item(),
            }
        rounds = []
        for _ in range(args.repeats):
            rounds.append(
                {
                    name: args.eval_batch_size / _timed(run, args.batches)
                    for name, run in runs.items()
                }
            )
    result = {**facts, "image_size": args.image_size, "batch_size": args.eval_batch_size}
    result |= {"encoder": args.encoder, "rounds": rounds, "agreement": agreement}
    print(format_report(result))
    return result


def format_report(result: dict) -> str:
    lines = [
        f"Unet/{result['encoder']} at {result['image_size']} px, batch {result['batch_size']}, "
        f"{result['threads']} torch threads, autocast {result['dtype']}; "
        f"{result['batch_norms_folded']} batch norms folded",
        "",
        "| backend | images/s (range over rounds) | / torch | max logit diff to fp32 "
        "| pixels with other labels |",
        "|---|---:|---:|---:|---:|",
    ]
    rounds = result["rounds"]
    for name in BACKENDS:
        speeds = [r[name] for r in rounds]
        ratio = [r[name] / r["torch"] for r in rounds]
        agree = result["agreement"][name]
        lines.append(
            f"| {name} | {min(speeds):.1f}-{max(speeds):.1f} | {min(ratio):.2f}-{max(ratio):.2f} "
            f"| {agree['max_abs_logit_diff']:.2e} | {agree['label_mismatch']:.2e} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="timed batches per round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    p.add_argument("--encoder", default="efficientnet-b3")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
