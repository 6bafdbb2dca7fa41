"""The one exception type that stage scripts turn into a one-line message."""


class SegpipeError(Exception):
    """A problem the user can fix (bad params, bad input files, missing credentials).

    Stage scripts print ``str(error)`` as one line and exit non-zero, without a traceback.
    The message must name the parameter or file at fault and, where possible, how to fix it.
    """


def install_extra(extra: str) -> str:
    """How to install one of the optional parts of ``pyproject.toml`` (``export``, ``openvino``,
    ``s3``) at the tested versions, for an error message."""
    return f"install segpipe[{extra}] (in a clone: pip install -e '.[{extra}]' -c constraints.txt)"
