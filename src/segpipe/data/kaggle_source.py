"""Kaggle data source: download a dataset with the ``kaggle`` client and extract it safely."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from segpipe.data.archive import safe_extract
from segpipe.errors import SegpipeError

logger = logging.getLogger(__name__)

CREDENTIALS_HELP = (
    "Kaggle credentials not found: put your API token in ~/.kaggle/kaggle.json (chmod 600), "
    "or set KAGGLE_USERNAME and KAGGLE_KEY, or set KAGGLE_API_TOKEN; "
    "see https://www.kaggle.com/docs/api"
)
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _credential_source() -> str | None:
    """Name where Kaggle credentials would come from (never their value), or None."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home_kaggle = Path.home() / ".kaggle"
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    config_dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    config_dirs += [home_kaggle, xdg]
    candidates = [d / "kaggle.json" for d in config_dirs] + [
        home_kaggle / name for name in ("access_token", "access_token.txt", "credentials.json")
    ]
    return next((str(p) for p in candidates if p.is_file()), None)


def _one_line(text: str) -> str:
    """Collapse ``text`` to one line and blank out any Kaggle secret it may contain."""
    for var in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def _load_client(dataset: str) -> Any:
    """Import ``kaggle`` lazily (swallowing its import-time prints) and authenticate."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as e:
        raise SegpipeError(
            f"Kaggle dataset {dataset}: the 'kaggle' package is not installed (pip install kaggle)"
        ) from e
    except SystemExit as e:
        raise SegpipeError(CREDENTIALS_HELP) from e
    except Exception as e:
        raise _client_error(dataset, e) from e
    finally:
        if captured.getvalue().strip():
            logger.debug("kaggle client output: %s", _one_line(captured.getvalue()))
    return api


def _client_error(dataset: str, error: Exception) -> SegpipeError:
    """Turn a kaggle/requests exception into a one-line error naming the dataset."""
    import requests

    if isinstance(error, requests.HTTPError):
        code = error.response.status_code if error.response is not None else None
        if code == 401:
            why = "authentication failed (HTTP 401): check your Kaggle API credentials"
        elif code in (403, 404):
            why = (
                f"not found or not accessible (HTTP {code}): check the name, and accept the "
                "dataset's terms on kaggle.com if it has any"
            )
        else:
            why = f"Kaggle request failed (HTTP {code})"
    elif isinstance(error, (requests.ConnectionError, requests.Timeout)):
        why = f"cannot reach Kaggle ({type(error).__name__}): check your internet connection"
    else:
        why = f"Kaggle request failed ({type(error).__name__}: {error})"
    return SegpipeError(_one_line(f"Kaggle dataset {dataset}: {why}"))


def download_kaggle(dataset: str, dest: Path) -> Path:
    """Download the Kaggle dataset ``owner/name`` and extract it under ``dest``.

    The archive is downloaded into a temporary folder inside ``dest``, extracted with
    :func:`segpipe.data.archive.safe_extract`, and deleted. An existing ``dest/name`` folder
    is replaced only once the new download has been extracted.

    Args:
        dataset: Kaggle dataset reference, ``owner/name``.
        dest: Folder in which the dataset folder ``name`` is created.

    Returns:
        The extraction root, ``dest/name``.

    Raises:
        SegpipeError: Bad dataset name, missing credentials, download or extraction failure.
    """
    if not isinstance(dataset, str) or not _DATASET_RE.match(dataset):
        raise SegpipeError(
            f"Kaggle dataset {dataset!r}: expected 'owner/name', "
            "e.g. tapakah68/supervisely-filtered-segmentation-person-dataset"
        )
    source = _credential_source()
    if source is None:
        raise SegpipeError(CREDENTIALS_HELP)
    logger.debug("Kaggle credentials from %s", source)
    api = _load_client(dataset)

    dest = Path(dest)
    root = dest / dataset.split("/")[1]
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".kaggle-download-", dir=dest))
    except OSError as e:
        raise SegpipeError(f"{dest}: cannot create the download folder ({e})") from e
    try:
        archive = _download_archive(api, dataset, tmp)
        staging = tmp / "extracted"
        try:
            safe_extract(archive, staging)
        except SegpipeError as e:
            raise SegpipeError(f"Kaggle dataset {dataset}: {e}") from e
        archive.unlink()
        if root.exists():
            logger.info("Replacing existing %s", root)
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Kaggle dataset %s extracted into %s", dataset, root)
    return root


def _download_archive(api: Any, dataset: str, folder: Path) -> Path:
    """Download ``dataset``'s zip archive into ``folder`` with the Kaggle client ``api``,
    keeping the client's own printing out of the user's terminal (it goes to the debug log)."""
    logger.info("Downloading Kaggle dataset %s", dataset)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            api.dataset_download_files(dataset, path=str(folder), force=True, quiet=True)
    except Exception as e:
        logger.debug("kaggle download error for %s", dataset, exc_info=True)
        raise _client_error(dataset, e) from e
    finally:
        if captured.getvalue().strip():
            logger.debug("kaggle client output: %s", _one_line(captured.getvalue()))
    archives = sorted(folder.glob("*.zip"))
    if not archives:
        raise SegpipeError(f"Kaggle dataset {dataset}: the download produced no zip archive")
    return archives[0]
