"""Stage: decode and resize the train and val splits once into memory-mapped arrays."""

from pathlib import Path

from segpipe.cli import exit_process, parser, run_stage
from segpipe.config import load_params
from segpipe.data import cache
from segpipe.data.geometry import Geometry
from segpipe.data.masks import RULE_FILE, load_rule

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--splits", type=Path, required=True, help="folder with the split CSVs")
    p.add_argument("--out", type=Path, required=True, help="folder for the .npy arrays")
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        rule = load_rule(args.splits / RULE_FILE, params.data)
        cache.run(args.splits, args.out, Geometry.from_train(params.train), rule)

    exit_process(run_stage(main, verbose=args.verbose, params=args.params))
