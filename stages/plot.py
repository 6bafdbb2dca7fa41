"""Stage: the prediction grid, the worst-case gallery, the Dice histogram, training curves."""

from pathlib import Path

from segpipe.cli import exit_process, parser, run_stage
from segpipe.config import load_params
from segpipe.data.masks import load_rule
from segpipe.reporting import plot

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--test", type=Path, required=True, help="test split CSV")
    p.add_argument("--mask-rule", type=Path, required=True, help="the split stage's mask_rule.json")
    p.add_argument("--per-image", type=Path, required=True, help="evaluate's per-image CSV")
    p.add_argument("--predictions", type=Path, required=True, help="predicted masks folder")
    p.add_argument("--live", type=Path, required=True, help="DVCLive folder of the train stage")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG plots")
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        plot.run(
            params.plot,
            args.test,
            args.per_image,
            args.predictions,
            args.live,
            args.out,
            load_rule(args.mask_rule, params.data),
        )

    exit_process(run_stage(main, verbose=args.verbose, params=args.params))
