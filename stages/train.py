"""Stage: train a model, validating every epoch; keep the best checkpoint."""

from pathlib import Path

from segpipe.cli import exit_process, parser, run_stage
from segpipe.config import load_params
from segpipe.training import train

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--cache", type=Path, required=True, help="arrays from the cache stage")
    p.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--live", type=Path, required=True, help="DVCLive folder for the history")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="folder for the training state saved after every epoch (an interrupted run "
        "continues from it; a finished run deletes it); not a DVC output",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="the folder that model.encoder_weights and model.init_from files must lie in "
        "(a dependency of this stage)",
    )
    args = p.parse_args()

    def main() -> None:
        params = load_params(args.params)
        train.run(params, args.cache, args.model, args.live, args.resume, weights_dir=args.weights)

    exit_process(run_stage(main, verbose=args.verbose, params=args.params))
