"""segpipe: a reproducible image-segmentation pipeline built on DVC."""

__version__ = "0.1.0"
