"""Files other steps read: written atomically, read with one-line errors.

Every file archscale writes for another step to read (fit JSON, plots, the runs
table, checkpoints, exported weights) goes through :func:`atomic_file`: write a
temporary sibling, flush it to disk, rename it over the target. A crash or an
error leaves the target as it was and no temporary behind. The file gets the
mode the user's umask gives a new file (or keeps the mode of the file it
replaces), not the 0600 of ``mkstemp``: a shared runs table stays readable to
the team. A failure to write is raised as an ``OSError`` naming the target (not
the temporary), so the CLI can say which file and why in one line. Every JSON
file it reads goes through :func:`read_json`, so a missing or malformed one is
reported the same way everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np

from archscale.io.errors import ACTION_ATTRIBUTE, HINT_ATTRIBUTE, UserError

NEARLY_FULL_BYTES = 64 * 2**20
"""Free space below which a write that failed without an errno (torch's writer) is reported as a full disk."""


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | Path) -> int:
    """The mode a replacement for ``path`` should have: the old file's, else what the umask gives a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _torch_write_failed(exc: BaseException) -> bool:
    """torch.save reports a failed write as a RuntimeError from its zip writer, without an errno."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text)


def free_bytes(directory: str | Path) -> int | None:
    """Bytes an unprivileged user may still write under ``directory`` (None when unknown)."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def write_failure(exc: BaseException, path: str | Path) -> OSError | None:
    """The ``OSError`` to raise when writing ``path`` failed with ``exc`` (None: not a write failure).

    The error names ``path`` (the user's file, not the temporary sibling that
    was being written) and is marked as a failed write; torch's writer error
    becomes "disk full" when the disk is (nearly) full, which is what its
    ``unexpected pos`` message means in practice.
    """
    path = Path(path)
    if isinstance(exc, OSError):
        code, cause = exc.errno, exc.strerror or " ".join(str(exc).split())
    elif _torch_write_failed(exc):
        free = free_bytes(path.parent)
        code = errno.ENOSPC if free is not None and free < NEARLY_FULL_BYTES else errno.EIO
        cause = os.strerror(code) + f" ({' '.join(str(exc).split())[:120]})"
    else:
        return None
    failure = OSError(code, cause, str(path))
    setattr(failure, ACTION_ATTRIBUTE, "write")
    hint = getattr(exc, HINT_ATTRIBUTE, None)
    if hint:
        setattr(failure, HINT_ATTRIBUTE, hint)
    return failure


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success rename it to ``path``.

    The parent folder is created if missing (the CLI's output policy,
    :mod:`archscale.io.outputs`, has already decided that it may be).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(handle, new_file_mode(path))
        with os.fdopen(handle, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        failure = write_failure(exc, path)  # before the temporary is removed: it is what filled the disk
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if failure is not None:
            raise failure from exc
        raise


@contextlib.contextmanager
def removed_on_failure(folder: str | Path) -> Iterator[Path]:
    """Create ``folder`` (if missing) for a block that writes into it; if the block fails, remove what it added.

    A write that fails part way (a full disk, above all) must leave nothing new behind: not the folder the
    output was going to, nor a file finished before the one that failed, so the user's tree is as it was
    and the next try starts clean. What was in ``folder`` before the block is left alone.
    """
    folder = Path(folder)
    missing = list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))  # nearest first
    before = set() if missing else {entry.name for entry in folder.iterdir()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    except BaseException:
        _remove_added(folder, before, missing)
        raise


def _remove_added(folder: Path, before: set[str], missing: list[Path]) -> None:
    """Remove the entries of ``folder`` not in ``before``, then the folders in ``missing`` (created for it)."""
    with contextlib.suppress(OSError):
        for entry in list(folder.iterdir()):
            if entry.name in before:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    for created in missing:
        with contextlib.suppress(OSError):
            created.rmdir()


def write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    with atomic_file(path) as out:
        out.write(text)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, turning every way it can fail into one line that names the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not text (a binary file, such as an image?); expected a JSON file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None


def jsonable(value: Any) -> Any:
    """Plain JSON types for anything archscale puts in a document: numpy scalars and arrays become Python
    numbers and lists, NaN and infinities become null (JSON has neither), tuples lists, paths strings."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, document: Any) -> None:
    """Atomically write ``document`` as indented JSON (see :func:`jsonable`)."""
    write_text(path, json.dumps(jsonable(document), indent=2) + "\n")
