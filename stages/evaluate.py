"""Stage: score the checkpoint on the test split at each image's original resolution."""

from pathlib import Path

from segpipe.cli import exit_process, parser, run_stage
from segpipe.config import load_params
from segpipe.evaluation import evaluate

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--model", type=Path, required=True, help="checkpoint to score")
    p.add_argument("--splits", type=Path, required=True, help="folder with the split CSVs")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--per-image", type=Path, required=True, help="per-image CSV to write")
    p.add_argument("--predictions", type=Path, required=True, help="folder for predicted masks")
    p.add_argument("--card", type=Path, default=None, help="model card (markdown) to write")
    p.add_argument("--sweep", type=Path, default=None, help="validation threshold sweep CSV")
    p.add_argument("--confusion", type=Path, default=None, help="confusion matrix rows CSV")
    p.add_argument("--test-set", type=Path, default=None, help="test-set fingerprint JSON")
    p.add_argument(
        "--environment", type=Path, default=None, help="JSON of where it was trained and scored"
    )
    p.add_argument(
        "--ensemble",
        type=Path,
        default=None,
        help="the folder that evaluate.ensemble files must lie in (the stage's dependency)",
    )
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        evaluate.run(
            params,
            args.model,
            args.splits,
            args.metrics,
            args.per_image,
            args.predictions,
            args.card,
            args.sweep,
            args.confusion,
            args.test_set,
            args.environment,
            ensemble_dir=args.ensemble,
        )

    exit_process(run_stage(main, verbose=args.verbose, params=args.params))
