"""Predict masks for new images with a trained checkpoint (not a pipeline stage: a command).

python stages/predict.py --model models/model.pt --input DIR_OR_FILE --output DIR [--overlay]
    [--overwrite] [--threshold T]
"""

from pathlib import Path

from segpipe.cli import parser, run_stage
from segpipe.tools import predict

if __name__ == "__main__":
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/model.pt"), help="checkpoint")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="folder for <stem>.png masks")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="foreground probability threshold (default: evaluate.threshold of --params if "
        "that file exists, else 0.5)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument(
        "--overwrite", action="store_true", help="replace masks and overlays already in --output"
    )
    args = p.parse_args()

    def main() -> None:
        predict.run(
            args.model,
            args.input,
            args.output,
            threshold=args.threshold,
            batch_size=args.batch_size,
            with_overlay=args.overlay,
            overwrite=args.overwrite,
            params_path=Path(args.params),
        )

    raise SystemExit(run_stage(main, verbose=args.verbose))
