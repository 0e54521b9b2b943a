"""The one exception type that the CLI turns into a one-line message instead of a traceback."""


class StrideError(Exception):
    """A problem with the user's input or environment, described in one line."""
