"""Stage: bring the dataset chosen by data.source into a normalised folder."""

from pathlib import Path

from segpipe.cli import exit_process, parser, run_stage
from segpipe.config import load_params
from segpipe.data import download

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument(
        "--downloads",
        type=Path,
        default=None,
        help="Kaggle source: folder that keeps each downloaded version, so an unchanged spec "
        "is not downloaded again (default: none, download every time); not a DVC output",
    )
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        download.run(params.data, params.data.synthetic.seed, args.out, args.downloads)

    exit_process(run_stage(main, verbose=args.verbose, params=args.params))
