"""``python -m segpipe``: the ``segpipe`` command (see :mod:`segpipe.tools.commands`)."""

from segpipe.tools.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
