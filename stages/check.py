"""Stage and command: check params.yaml (every key, type and range, model names)."""

from segpipe.cli import parser, run_stage
from segpipe.tools import check

if __name__ == "__main__":
    args = parser(__doc__).parse_args()
    raise SystemExit(run_stage(lambda: check.run(args.params), verbose=args.verbose))
