"""Export a checkpoint to ONNX and check it against PyTorch in onnxruntime (`segpipe export`)."""

from segpipe.commands import export

if __name__ == "__main__":
    raise SystemExit(export.main())
