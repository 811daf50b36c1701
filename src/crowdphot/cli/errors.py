"""The one exception type the command line turns into a one-line message and exit 2."""

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""
