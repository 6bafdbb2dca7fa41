"""Constants shared by readers, numeric code and stages; no I/O, no imports."""

IGNORE = 255
"""Class index of pixels left out of loss and metrics; ``data.ignore_index`` maps to it."""

SPLITS = ("train", "val", "test")
"""The split stage's subsets, in order."""

LIVE_HISTORY = "plots/metrics"
"""Below the train stage's DVCLive folder: the per-epoch history, one ``<metric>.tsv`` per logged
metric (``train/loss.tsv``, ``val/dice.tsv``, ...), as DVCLive lays it out. Train trims it on
resume, plot draws it; dvc.yaml's ``plots:`` names the same folder."""
