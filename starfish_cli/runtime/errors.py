"""The one exception type that reaches users: a problem with their input, and how to fix it."""


class StarfishError(Exception):
    """Bad input. The message is one line that names the problem and the fix."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters (its type when it has none):
    what a one-line error quotes of another library's multi-line message."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__
