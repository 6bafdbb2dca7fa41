"""The data stages: download (folder, Kaggle, synthetic), split (pairing, checks, mask rule),
cache (arrays at training size); and the readers they share."""
