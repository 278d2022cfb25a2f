"""The one error type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config value, a path, a file. The message is one line that
    names the bad value and what would be valid."""
