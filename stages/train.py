"""Stage: train a model, validating every epoch; keep the best checkpoint."""

from pathlib import Path

from segpipe import train
from segpipe.cli import parser, run_stage
from segpipe.config import load_params

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--splits", type=Path, required=True, help="folder with train.csv and val.csv")
    p.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--live", type=Path, required=True, help="DVCLive folder for the history")
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        train.run(params, args.splits, args.model, args.live)

    raise SystemExit(run_stage(main, args.verbose))
