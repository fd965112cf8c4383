"""Files other steps read: written atomically, read with one-line errors.

Every file archscale writes for another step to read (fit JSON, plots, the runs
table, checkpoints, exported weights) goes through :func:`atomic_file`: write a
temporary sibling, flush it to disk, rename it over the target. A crash or an
error leaves the target as it was and no temporary behind. Every JSON file it
reads goes through :func:`read_json`, so a missing or malformed one is reported
the same way everywhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np

from archscale.errors import UserError


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    except (OSError, UnicodeDecodeError) as exc:
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
