"""Constants shared by readers, numeric code and stages; no I/O, no imports."""

IGNORE = 255
"""Class index of pixels left out of loss and metrics; ``data.ignore_index`` maps to it."""

SPLITS = ("train", "val", "test")
"""The split stage's subsets, in order."""

LIVE_HISTORY = "plots/metrics"
"""Below the train stage's DVCLive folder: the per-epoch history, one ``<metric>.tsv`` per logged
metric (``train/loss.tsv``, ``val/dice.tsv``, ...), as DVCLive lays it out. Train trims it on
resume, plot draws it; dvc.yaml's ``plots:`` names the same folder."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet's per-channel mean and std (RGB, 0..1): most encoders' normalisation, and the one
checkpoints written before they stored their own are read with."""
