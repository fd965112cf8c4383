"""The one user-facing error type, and how I/O and memory failures reach the user.

Library code raises :class:`UserError` for anything a user can fix (a bad
file, a bad flag, a design that cannot be fitted). The CLI turns it into one
line on stderr and exit code 2, never a traceback.

A full disk, a read-only folder or an exhausted memory are not the user's
input, but they are just as much the user's to fix, so they get the same
treatment: :func:`describe_failure` turns an ``OSError`` (naming the file in
its ``filename``), a ``MemoryError`` or a torch out-of-memory error into that
one line. Library code does not catch them; it only adds what it knows on the
way up: the file the user named (not a temporary sibling, see
:func:`archscale.io.files.atomic_file`) and, with :func:`keep_hint`, what was
kept and how to continue.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Iterator

HINT_ATTRIBUTE = "archscale_hint"
ACTION_ATTRIBUTE = "archscale_action"

_CAUSES = {
    errno.ENOSPC: "disk full: no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a file is in the way where a directory is expected",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOMEM: "out of memory",
}


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""


def add_hint(exc: BaseException, hint: str) -> None:
    """Attach "what was kept and how to continue" to a failure, unless a closer caller already did."""
    if not getattr(exc, HINT_ATTRIBUTE, None):
        try:
            setattr(exc, HINT_ATTRIBUTE, hint)
        except AttributeError:  # an exception type without __dict__: the generic hint will do
            pass


@contextlib.contextmanager
def keep_hint(hint: str) -> Iterator[None]:
    """Inside this block, an I/O or memory failure carries ``hint`` (what was kept, how to continue)."""
    try:
        yield
    except BaseException as exc:
        if is_resource_failure(exc):
            add_hint(exc, hint)
        raise


def is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, torch's ``OutOfMemoryError``, or an allocator's out-of-memory ``RuntimeError``."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "not enough memory"))


def is_resource_failure(exc: BaseException) -> bool:
    """An I/O or memory failure (as opposed to a bug or a user error)."""
    return isinstance(exc, OSError) or is_out_of_memory(exc)


def failure_cause(exc: OSError) -> str:
    """A short, plain cause for an ``OSError``: "disk full", "read-only file system", ..."""
    if exc.errno in _CAUSES:
        return _CAUSES[exc.errno]
    text = exc.strerror or " ".join(str(exc).split())
    return text or type(exc).__name__


def describe_failure(exc: BaseException) -> str | None:
    """One line for an I/O or memory failure (path, cause, what was kept, how to continue); None for others."""
    hint = getattr(exc, HINT_ATTRIBUTE, None)
    if is_out_of_memory(exc):
        message = "out of memory"
        detail = getattr(exc, "filename", None)
        if detail:
            message = f"{detail}: {message}"
        return f"{message}; " + (hint or "nothing was written; use a smaller model, batch or budget")
    if not isinstance(exc, OSError):
        return None
    action = getattr(exc, ACTION_ATTRIBUTE, None)
    cause = failure_cause(exc)
    where = f"{exc.filename}: " if exc.filename else ""
    what = f"cannot {action} ({cause})" if action else cause
    default = (f"{exc.filename} was left as it was" if action == "write" and exc.filename
               else "fix that and run the command again")
    return f"{where}{what}; {hint or default}"


MAX_MESSAGE_CHARS = 300
"""A stored or printed error message is cut to this many characters."""


def one_line(message: object) -> str:
    """An error message as a single, bounded line (the store and the terminal want one)."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."
