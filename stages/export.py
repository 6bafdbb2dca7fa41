"""Export a checkpoint to ONNX and check it against PyTorch in onnxruntime (not a pipeline
stage: a command)."""

from pathlib import Path

from segpipe.cli import parser, run_stage
from segpipe.tools import export

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--model", type=Path, required=True, help="checkpoint to export")
    p.add_argument(
        "--out", type=Path, required=True, help="ONNX file to write (and <out>.json, the figures)"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=export.DEFAULT_OPSET,
        help="ONNX opset, %(default)s..23 (default: %(default)s; 18+ uses torch.export)",
    )
    p.add_argument(
        "--check-size",
        type=int,
        default=256,
        help="parity check inputs: 1x3xSxS and 2x3x(S-64)x(S+64) (default: %(default)s)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=export.DEFAULT_TOLERANCE,
        help="largest accepted |logit difference| vs PyTorch (default: %(default)g)",
    )
    args = p.parse_args()

    def main() -> None:
        export.run(args.model, args.out, args.opset, args.check_size, args.tolerance)

    raise SystemExit(run_stage(main, verbose=args.verbose))
