"""The one exception type that reaches users: a problem with their input, and how to fix it."""


class StarfishError(Exception):
    """Bad input. The message is one line that names the problem and the fix."""
