"""Stage and command: check params.yaml (every key, type and range, model names)."""

from segpipe import check
from segpipe.cli import exit_process

if __name__ == "__main__":
    exit_process(check.main())
