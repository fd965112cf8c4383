"""The one user-facing error type.

Library code raises :class:`UserError` for anything a user can fix (a bad
file, a bad flag, a design that cannot be fitted). The CLI turns it into one
line on stderr and exit code 2, never a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""
