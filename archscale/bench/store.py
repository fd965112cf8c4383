"""The results store: one append-only SQLite table of benchmark records.

Why SQLite: several ``archscale bench`` processes (one per GPU, or a sweep
restarted beside a running one) append to the same file. Each
:func:`append` is one ``BEGIN IMMEDIATE`` transaction in WAL mode with a busy
timeout, so concurrent writers queue instead of failing or interleaving, and
a reader never sees half a batch. Records are appended the moment they are
measured, so an interrupted sweep keeps everything it finished.

:func:`load_results` reads the store (or a CSV exported from it, the form
results are committed to git in) into a DataFrame with the columns of
:data:`archscale.bench.records.COLUMNS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import pandas as pd

from archscale.bench.records import COLUMN_TYPES, COLUMNS, LATENCY_COLUMNS, MEASURED_BACKENDS
from archscale.io.errors import ACTION_ATTRIBUTE, HINT_ATTRIBUTE, UserError
from archscale.io.files import NEARLY_FULL_BYTES, atomic_file, free_bytes
from archscale.io.outputs import Kind
from archscale.io.units import canonical_dtype

TABLE = "results"
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
BUSY_TIMEOUT_S = 60.0
SIDE_FILES = ("-wal", "-shm", "-journal")
"""Files SQLite keeps beside a store while it is open (WAL, its index, a rollback journal)."""
APPEND_HEADROOM_BYTES = 64 * 1024
"""Free space an append needs beside the store: the WAL index (32 KiB) and a WAL of a few pages."""
T = TypeVar("T")


def check_store_path(path: str | Path) -> Path:
    """Refuse anything but an SQLite file name before a sweep starts (so nothing is half-written)."""
    path = Path(path)
    if path.suffix.lower() not in SQLITE_SUFFIXES:
        raise UserError(f"{path}: the results store must end in {', '.join(SQLITE_SUFFIXES)} "
                        "(write CSV with `archscale bench --show --store STORE --export FILE.csv`)")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected an SQLite file")
    return path


def check_store(path: str | Path, flag: str = "--store") -> Path:
    """Before anything is measured: the store is an SQLite file name, an existing store is readable, undamaged and
    archscale's, and its disk has room for a row.

    A measurement that cannot be stored is lost, so a corrupt or foreign file, or a full disk, is
    refused up front (with how to continue), not found after the work is done.
    Write permission is the output policy's part (:mod:`archscale.io.outputs`).
    """
    path = check_store_path(path)
    if path.exists() and path.stat().st_size > 0:
        _check_existing_store(path, flag)
    _check_headroom(path)
    return path


def _check_existing_store(path: Path, flag: str) -> None:
    """An existing file is an archscale store, readable and undamaged; it is only read (its bytes and mtime stay)."""
    hint = f"nothing was measured; move it aside or give another {flag}"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(16)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot be read ({exc.strerror or exc}); {hint}") from None
    if magic != b"SQLite format 3\x00":
        raise UserError(f"{flag} {path}: is not an SQLite results store (wrong file header); {hint}")
    try:
        status, present, foreign = _read_only(path, _inspect)
    except sqlite3.DatabaseError as exc:
        failure = _storage_failure(exc, path)
        if failure is not None:  # a full disk or a read-only folder, not a damaged store
            setattr(failure, ACTION_ATTRIBUTE, "open")
            setattr(failure, HINT_ATTRIBUTE, f"nothing was measured and {path} was left as it was")
            raise failure from None
        raise UserError(f"{flag} {path}: is not a readable results store ({exc}); {hint}") from None
    if not status or status[0] != "ok":
        raise UserError(f"{flag} {path}: the results store is damaged (integrity check: {status[0] if status else '?'}); {hint}")
    if present and not {"backend", "tokens_per_s", "status"} <= present:
        raise UserError(f"{flag} {path}: has a table {TABLE!r} that is not archscale's results table; {hint}")
    if foreign:
        raise UserError(f"{flag} {path}: {_foreign_database(foreign)}; nothing was measured and it was left as it "
                        f"was: give {flag} a new file name or an archscale store")


def _inspect(connection: sqlite3.Connection) -> tuple[Any, set[str], list[str]]:
    """The integrity check's verdict, the results table's columns, and the tables of a database that is not a store."""
    status = connection.execute("PRAGMA quick_check").fetchone()
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")}
    return status, present, _foreign_tables(connection)


def _foreign_tables(connection: sqlite3.Connection) -> list[str]:
    """The tables of a database without archscale's results table (empty for a store, or a database with none)."""
    tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return [] if TABLE in tables else [name for name in tables if not name.startswith("sqlite_")]


def _foreign_database(tables: list[str]) -> str:
    shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
    return f"is an SQLite database of something else (tables {shown}), not an archscale results store"


def _check_headroom(path: Path) -> None:
    """A store on a full disk is refused before anything is measured: the measurement could not be stored."""
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
    free = free_bytes(folder)
    if free is None or free >= APPEND_HEADROOM_BYTES:
        return
    failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    setattr(failure, ACTION_ATTRIBUTE, "open" if path.exists() else "create")
    setattr(failure, HINT_ATTRIBUTE, f"nothing was measured and {path} was left as it was" if path.exists()
            else "nothing was measured")
    raise failure


def _read_only(path: Path, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` on a connection that only reads ``path`` and creates nothing beside it.

    SQLite opens a WAL store (every store archscale appended to) read-only by creating its -wal and -shm files,
    which a read-only connection cannot remove again: every read left them beside the store. With no -wal
    beside it, every committed row is in the file, so the file is read as immutable (no locks, no files), and
    read again should a writer change it meanwhile. With a -wal (a writer at work, or one killed before its
    rows reached the file: they are only there) or a rollback journal, it is read through the files already
    there; where even that fails (a read-only folder without the -shm), the file alone is read.
    """
    journals = [Path(f"{path}-wal"), Path(f"{path}-journal")]
    for _ in range(3):
        if any(journal.exists() for journal in journals):
            break
        before = _signature(path)
        result = _run(path, "immutable=1", work)
        if _signature(path) == before:
            return result
    try:
        return _run(path, "mode=ro", work)
    except sqlite3.OperationalError:
        return _run(path, "immutable=1", work)


def _signature(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def _run(path: Path, mode: str, work: Callable[[sqlite3.Connection], T]) -> T:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        return work(connection)
    finally:
        connection.close()


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return connection


def _ensure_table(connection: sqlite3.Connection) -> None:
    """Create the table, or add columns a newer archscale defines to an older store."""
    columns = ", ".join(f'"{name}" {kind}' for name, kind in COLUMN_TYPES)
    connection.execute(f'CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})')
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")}
    for name, kind in COLUMN_TYPES:
        if name not in present:
            connection.execute(f'ALTER TABLE {TABLE} ADD COLUMN "{name}" {kind}')


def _row(record: Mapping[str, Any]) -> tuple:
    unknown = set(record) - set(COLUMNS)
    if unknown:
        raise ValueError(f"record has unknown column(s) {', '.join(sorted(unknown))}")
    values = []
    for name in COLUMNS:
        value = record.get(name)
        if hasattr(value, "item"):  # numpy scalars
            value = value.item()
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and value != value:  # NaN -> NULL
            value = None
        values.append(value)
    return tuple(values)


def append(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Append records in one transaction; returns how many. Safe with concurrent writers.

    WAL lets readers run beside a writer; ``BEGIN IMMEDIATE`` takes the write
    lock up front, so two writers never deadlock upgrading a read lock; the
    busy timeout makes the second wait its turn.
    """
    rows = [_row(record) for record in records]
    if not rows:
        return 0
    path = Path(path)
    created = [p for p in (path, *(Path(f"{path}{side}") for side in SIDE_FILES), path.parent) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _insert(path, rows)
    except BaseException:
        if path in created:
            _discard_new_store(path, created)
        raise
    return len(rows)


def _insert(path: Path, rows: list[tuple]) -> None:
    names = ", ".join(f'"{name}"' for name in COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    connection = _connect(path)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            _ensure_table(connection)
            connection.executemany(f"INSERT INTO {TABLE} ({names}) VALUES ({marks})", rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # SQLite has already rolled back after a full disk
                connection.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise _storage_failure(exc, path) or UserError(f"{path}: cannot append to the results store ({exc})") from None
    finally:
        connection.close()


def _discard_new_store(path: Path, created: list[Path]) -> None:
    """After a failed first append, remove the store it created (a 0-byte or table-less file, its -wal, -shm and
    folder), so a full disk leaves nothing behind; kept if another writer has stored rows in it meanwhile."""
    wal = Path(f"{path}-wal")
    try:
        if wal.exists() and wal.stat().st_size > 0:
            return  # frames another writer committed may be there
        if path.stat().st_size > 0 and _read_only(path, _row_count) > 0:
            return
    except (OSError, sqlite3.DatabaseError):
        return
    for item in created:  # files first, the folder last
        with contextlib.suppress(OSError):
            if item.is_dir():
                item.rmdir()
            else:
                item.unlink(missing_ok=True)


def _row_count(connection: sqlite3.Connection) -> int:
    if not connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone():
        return 0
    return connection.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]


_SQLITE_CAUSES = (("disk is full", errno.ENOSPC), ("readonly database", errno.EROFS), ("disk i/o error", errno.EIO),
                  ("unable to open database file", errno.EACCES))


def _storage_failure(exc: sqlite3.DatabaseError, path: Path) -> OSError | None:
    """SQLite's "database or disk is full" and kin as the ``OSError`` the CLI reports (None: not a storage fault)."""
    text = str(exc).lower()
    for phrase, code in _SQLITE_CAUSES:
        if phrase in text:
            free = free_bytes(path.parent)
            if code == errno.EIO and free is not None and free < NEARLY_FULL_BYTES:
                code = errno.ENOSPC  # SQLite reports a failed write of its -wal/-shm files as an I/O error
            failure = OSError(code, str(exc), str(path))
            setattr(failure, ACTION_ATTRIBUTE, "write")
            return failure
    return None


def load_results(path: str | Path, measured_only: bool = False) -> pd.DataFrame:
    """The results as a DataFrame: an SQLite store (.sqlite/.sqlite3/.db) or a CSV export.

    Columns are :data:`~archscale.bench.records.COLUMNS` in order (a CSV may
    carry fewer or more; shape, ``gpu``, workload and ``tokens_per_s`` are
    what search needs). ``measured_only`` keeps successful torch/vLLM rows,
    dropping roofline estimates and failures: what search should use as
    measured throughput.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such results file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a results store (.sqlite, .db) or a .csv export")
    suffix = path.suffix.lower()
    if suffix in SQLITE_SUFFIXES:
        frame = _read_sqlite(path)
    elif suffix == ".csv":
        frame = _read_csv(path)
    else:
        raise UserError(f"{path}: unknown results format {suffix or '(no extension)'}; use .sqlite, .db or .csv")
    frame = _normalise(frame)
    if measured_only:
        frame = frame[frame["backend"].isin(MEASURED_BACKENDS) & (frame["status"] == "ok")].reset_index(drop=True)
    return frame


def _read_sqlite(path: Path) -> pd.DataFrame:
    """Read the table without creating anything beside the store (:func:`_read_only`)."""
    try:
        return _read_only(path, lambda connection: _query(connection, path))
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: not a readable results store ({exc})") from None


def _query(connection: sqlite3.Connection, path: Path) -> pd.DataFrame:
    try:
        exists = connection.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)).fetchone()
        if not exists:
            foreign = _foreign_tables(connection)
            if foreign:
                raise UserError(f"{path}: {_foreign_database(foreign)}; give a store that archscale bench --store wrote")
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.read_sql_query(f"SELECT * FROM {TABLE} ORDER BY id", connection).drop(columns=["id"])
    except pd.errors.DatabaseError as exc:  # pandas wraps sqlite errors raised inside read_sql_query
        cause = exc.__cause__ if isinstance(exc.__cause__, sqlite3.Error) else None
        raise (cause or sqlite3.DatabaseError(str(exc))) from None


RECORD_COLUMNS = ("tokens_per_s",)
"""What a CSV of bench records cannot lack: the measurement (a hand-made table may carry little else)."""


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV export of bench records; another table (a runs table, an empty file) is refused, not read as none."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: is empty, not an export of bench records; give a store or CSV that "
                        "`archscale bench --store` wrote") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot be read as CSV: {str(exc).splitlines()[0]}") from None
    missing = [column for column in RECORD_COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(f"{path}: has no column {missing[0]!r}, so it holds no bench records (a runs table?); give "
                        "a store or CSV that `archscale bench --store` wrote")
    return frame


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Every known column present, known columns first, ``tie_embeddings`` as bool, dtypes by their canonical names."""
    for name in COLUMNS:
        if name not in frame.columns:
            frame[name] = None
    extra = [c for c in frame.columns if c not in COLUMNS]
    frame = frame[list(COLUMNS) + extra].copy()
    if len(frame):
        frame["tie_embeddings"] = frame["tie_embeddings"].map(
            lambda v: None if v is None or v != v else str(v).strip().lower() in ("1", "true", "1.0"))
        frame["dtype"] = frame["dtype"].map(lambda v: canonical_dtype(v) or v if isinstance(v, str) else v)  # bf16 too
    for name in ("tokens_per_s", "output_tokens_per_s", "tokens_per_s_std", "prefill_s", "decode_s", "memory_gb",
                 *LATENCY_COLUMNS):  # a column an older store lacks is all NaN, a float like the rest
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return frame


def export_csv(path: str | Path, out_csv: str | Path) -> int:
    """Write the whole store as CSV (for committing results to git); returns the row count."""
    frame = load_results(path)
    with atomic_file(out_csv) as handle:
        frame.to_csv(handle, index=False)
    return len(frame)


def _check_store_output(flag: str, path: Path) -> None:
    check_store(path, flag)


STORE = Kind("an SQLite results store", SQLITE_SUFFIXES, appends=True, check=_check_store_output,
             hint=" (for CSV: archscale bench --show --store STORE --export FILE.csv)")
"""The results store as an output (``--store``): measurements are appended to it."""
