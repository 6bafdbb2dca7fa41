"""Stage: decode and resize every split once into memory-mapped arrays for training."""

from pathlib import Path

from segpipe import cache
from segpipe.cli import parser, run_stage
from segpipe.config import load_params

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--splits", type=Path, required=True, help="folder with the split CSVs")
    p.add_argument("--out", type=Path, required=True, help="folder for the .npy arrays")
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        cache.run(
            args.splits,
            args.out,
            params.train.image_size,
            params.data.num_classes,
            params.data.ignore_index,
        )

    raise SystemExit(run_stage(main, args.verbose, params=args.params))
