"""Stage and command: check params.yaml (every key, type and range, model names)."""

from segpipe import check

if __name__ == "__main__":
    raise SystemExit(check.main())
