"""Commands outside the pipeline: predict, export, bench, check."""
