"""Predict masks for new images with a trained checkpoint (not a pipeline stage: a command).

python stages/predict.py --model models/model.pt --input DIR_OR_FILE --output DIR [--overlay]
    [--overwrite] [--threshold T]      (the same as `segpipe predict`)
"""

from segpipe.cli import exit_process
from segpipe.commands import predict

if __name__ == "__main__":
    exit_process(predict.main())
