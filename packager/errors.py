"""One error type for everything the user can fix: the CLI prints its message on one line and exits non-zero."""
import os


class UserError(Exception):
    """A problem with the user's input or environment, stated as what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def env_number(name: str, default: float, cast: type = float, minimum: float = 0):
    """The number in environment variable `name` (`default` when unset or empty); a bad value is a UserError
    naming the variable, not a traceback."""
    text = os.environ.get(name, "").strip()
    if not text:
        return cast(default)
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "a whole number" if cast is int else "a number"
        raise UserError(f"{name}={text!r}: expected {kind} of at least {minimum:g}; fix or unset it")
    return value
