"""Constants shared by readers, numeric code and stages; no I/O, no imports."""

IGNORE = 255
"""Class index of pixels left out of loss and metrics; ``data.ignore_index`` maps to it."""

SPLITS = ("train", "val", "test")
"""The split stage's subsets, in order."""
