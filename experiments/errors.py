"""The one error type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config value, a path, a file. The message is one line that
    names the bad value and what would be valid."""


def first_line(error: BaseException, lines: int = 1) -> str:
    """The first non-empty line(s) of an exception's message (its type when it has none), joined
    into one line: how a library's multi-line error becomes part of a one-line UserError."""
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(text[:lines]) if text else type(error).__name__
