"""The check stage and command: validate a params file as every stage reads it.

Every stage validates the whole file when it runs, but DVC runs a stage only when the
parameters it lists change: a misspelt section added by hand (``modle:``) would go unnoticed.
The check stage depends on the whole file, so ``dvc repro`` reports it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from segpipe.config import Params, load_params
from segpipe.model.network import check_model_names

log = logging.getLogger(__name__)


def run(path: Path) -> Params:
    """Load ``path`` strictly and check the model's architecture and encoder names.

    Raises:
        SegpipeError: the first problem, naming the key.
    """
    params = load_params(path)
    check_model_names(params.model)
    log.info("%s: valid", path)
    return params
