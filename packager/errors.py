"""One error type for everything the user can fix: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input or environment, stated as what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
