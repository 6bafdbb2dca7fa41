"""The commands outside the pipeline: predict, export (ONNX and smp) and compare; the
``segpipe`` command that runs them is :mod:`segpipe.__main__`."""
