"""Benchmarks of segpipe: throughput, stage times, predict latency, backends, recipes.

Not part of the product package: run them from the repository root with
``python -m benchmarks --help``.
"""
