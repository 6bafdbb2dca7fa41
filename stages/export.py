"""Export a checkpoint to ONNX and check it against PyTorch in onnxruntime (`segpipe export`)."""

from segpipe.cli import exit_process
from segpipe.commands import export

if __name__ == "__main__":
    exit_process(export.main())
