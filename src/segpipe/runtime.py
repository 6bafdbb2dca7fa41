"""Where and how a model runs: device, autocast precision, memory layout, and the memory it
takes (the allocator setting and the peak)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import platform
import re
from pathlib import Path

import torch
from torch import nn

from segpipe.errors import SegpipeError


def pick_device(local_rank: int | None = None) -> torch.device:
    """The one place a device is chosen: CUDA where there is a GPU (GPU ``local_rank`` for one
    process of several), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)


def parse_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (``None``: :func:`pick_device`), refusing one this machine
    does not have with a one-line error."""
    if device is None:
        return pick_device()
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        hint = "not a device name (e.g. cpu, cuda, cuda:1)"
        raise SegpipeError(f"device {device!r}: {hint}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise SegpipeError(f"device {device!r}: this machine has {count} CUDA GPU(s)")
    elif chosen.type != "cpu":
        raise SegpipeError(f"device {device!r}: segpipe runs on cpu or cuda")
    return chosen


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``; None means plain fp32.

    ``auto`` is bf16 on CUDA GPUs and CPUs with native bf16 support, fp16 on older GPUs,
    and fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return torch.bfloat16 if native_bf16 else None


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: the values that travel together through every loop.

    Args:
        device: where the model and its batches live.
        dtype: the autocast dtype; None is plain fp32.
        channels_last: channels-last memory layout for the model and its input batches.
    """

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool = dataclasses.field(kw_only=True)

    @classmethod
    def choose(
        cls, precision: str, *, channels_last: bool, device: torch.device | None = None
    ) -> Runtime:
        """The runtime for ``train.precision`` and ``train.channels_last`` on ``device``
        (default: :func:`pick_device`)."""
        device = pick_device() if device is None else device
        return cls(device, resolve_precision(precision, device), channels_last=channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to :attr:`dtype`, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch (N, C, H, W) on the device, in the model's memory layout."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in the memory layout its inputs will have."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler where training needs one (fp16 autocast on CUDA), else None."""
        if self.dtype == torch.float16 and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc maps every allocation above its mmap threshold (at most 32 MiB) afresh
    and unmaps it on free, and trims the heap's free top, so the large activations and
    gradients of each CPU training step are page-faulted and zero-filled by the kernel all
    over again, a share of the CPU training step measured in BENCHMARKS.md. The
    same as running with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``; peak
    memory does not grow, freed memory just stays with the process. Returns False (and
    changes nothing) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library handle, or not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


NUMERIC_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16")
"""CPU features whose presence changes which oneDNN/ATen kernels run, and so the low bits of
every result (bf16 matrix products on avx512_bf16 and on AMX round differently)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Environment:
    """What decides a run's numbers besides code, data and params: two runs with equal
    environments and inputs are bit-identical; with different ones they differ by rounding,
    which training amplifies up to the spread between seeds (docs/experiments.md, Reproducibility).

    Args:
        cpu: the CPU's model name (and vendor family/model numbers).
        isa: the :data:`NUMERIC_ISA` features the CPU has, space-separated ('' if none).
        kernels: ATen's CPU kernel level (``torch.backends.cpu.get_cpu_capability()``).
        device: ``cpu``, or the GPU's name.
        torch, onednn, cuda: library versions (``cuda`` '' on a CPU-only build or device).
        threads: torch's intra-op threads.
        precision: the arithmetic the model ran in (fp32, bf16 or fp16 autocast).
    """

    cpu: str
    isa: str
    kernels: str
    device: str
    torch: str
    onednn: str
    cuda: str
    threads: int
    precision: str

    @classmethod
    def current(cls, runtime: Runtime) -> Environment:
        """This process's environment when running on ``runtime``."""
        on_gpu = runtime.device.type == "cuda"
        onednn = re.search(r"MKL-DNN v([\w.]+)", torch.__config__.show())
        return cls(
            cpu=_cpu_model(),
            isa=" ".join(f for f in NUMERIC_ISA if f in _cpu_flags()),
            kernels=str(torch.backends.cpu.get_cpu_capability()),
            device=torch.cuda.get_device_name(runtime.device) if on_gpu else "cpu",
            torch=str(torch.__version__),
            onednn=onednn.group(1) if onednn else "",
            cuda=(torch.version.cuda or "") if on_gpu else "",
            threads=torch.get_num_threads(),
            precision={None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[runtime.dtype],
        )

    def to_dict(self) -> dict[str, str | int]:
        return dataclasses.asdict(self)


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines())
    )


def _cpu_model() -> str:
    info = _cpuinfo()
    if not info:
        return platform.processor() or platform.machine()
    numbers = "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"{info.get('model name', '?')} ({info.get('vendor_id', '?')} {numbers})"


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())
