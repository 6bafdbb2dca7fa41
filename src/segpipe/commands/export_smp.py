"""``segpipe export --format smp``: a checkpoint as smp's ``save_pretrained`` folder.

    segpipe export --format smp --model models/model.pt --out models/smp

The folder holds ``config.json`` and ``model.safetensors`` (what ``smp.from_pretrained(folder)``
loads, offline) and ``segpipe.json``: the checkpoint's ``model_config`` (classes, input size and
the mean/std to normalise inputs with), which smp's config does not carry. The folder appears
only once smp loaded it back and gave the same logits. It is also what ``model.init_from`` takes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from segpipe.errors import SegpipeError
from segpipe.files import staged_dir, write_json
from segpipe.model.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

SEGPIPE_FILE = "segpipe.json"
SMP_FILES = ("config.json", "model.safetensors")


def check_out(model_path: Path, out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding anything but an earlier export.

    Raises:
        SegpipeError: naming the path and the fix.
    """
    if out.exists() and not out.is_dir():
        raise SegpipeError(
            f"{out}: a file, where --format smp writes a folder; choose another --out"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / SMP_FILES[0]).is_file():
        raise SegpipeError(
            f"{out}: a folder that holds other files (no smp config.json), so export does not "
            "replace it; choose a new or empty --out"
        )
    if model_path.resolve().is_relative_to(out.resolve()):
        raise SegpipeError(f"{out}: holds the --model checkpoint; choose another --out")


def run(model_path: Path, out: Path, check_size: int, tolerance: float) -> dict[str, Any]:
    """Write ``out`` (replaced as a whole) and check it with ``smp.from_pretrained``.

    Returns:
        The parity figures: the checked input shape and the largest logit difference.
    """
    import segmentation_models_pytorch as smp

    check_out(model_path, out)
    model, checkpoint = load_checkpoint(model_path)
    x = torch.rand(1, 3, check_size, check_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    with staged_dir(out) as staging:
        model.save_pretrained(staging)
        write_json(staging / SEGPIPE_FILE, checkpoint.model_config.to_dict())
        loaded = smp.from_pretrained(str(staging)).eval()
        with torch.no_grad():
            diff = float((loaded(x) - expected).abs().max())
        if not diff <= tolerance:
            raise SegpipeError(
                f"{out}: smp.from_pretrained gives logits {diff:.2e} away from the checkpoint's "
                f"(tolerance {tolerance:g}); nothing was written"
            )
    log.info(
        "exported %s for smp.from_pretrained (%s); parity: max |diff| %.1e on 1x3x%dx%d",
        out,
        ", ".join((*SMP_FILES, SEGPIPE_FILE)),
        diff,
        check_size,
        check_size,
    )
    return {"out": str(out), "input": [1, 3, check_size, check_size], "max_abs_diff": diff}
