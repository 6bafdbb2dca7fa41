"""Stage: validate image/mask pairs, write train/val/test CSV files and a data report."""

from pathlib import Path

from segpipe.cli import exit_process, parser, run_stage
from segpipe.config import load_params
from segpipe.data import split

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--raw", type=Path, required=True, help="dataset folder from the download stage")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for {train,val,test}.csv and report.{json,md}; replaced as a whole",
    )
    p.add_argument(
        "--lists",
        type=Path,
        default=None,
        help="the folder that split.lists files must lie in (a dependency of this stage)",
    )
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        split.run(
            params.split,
            params.split.seed,
            args.raw,
            args.out,
            params.data.num_classes,
            params.data.ignore_index,
            params.data.mask_suffix,
            params.data.mask_colours,
            lists_dir=args.lists,
            ignore_colour=params.data.ignore_colour,
        )

    exit_process(run_stage(main, verbose=args.verbose, params=args.params))
