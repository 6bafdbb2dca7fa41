"""segpipe: a reproducible image-segmentation pipeline built on DVC."""

import os

# albumentations asks PyPI for its latest release on every import (an HTTP request with a 2 s
# timeout; offline, a "Error fetching version info" warning) unless this is set. Every segpipe
# module imports this package first, so no segpipe import reaches the network; a user who wants
# the check sets NO_ALBUMENTATIONS_UPDATE=0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
