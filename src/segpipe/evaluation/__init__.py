"""The evaluate stage: metrics on the test split, threshold sweep, model card."""
