"""The runs table: one row per training run, the input every law fits.

Canonical columns are ``N`` (non-embedding parameters), ``D`` (training
tokens) and ``loss``; where known, the shape columns ``n_layers``,
``d_model``, ``n_heads``, ``n_kv_heads``, ``d_head``, ``d_ff`` and ``vocab``.
The shape descriptors the laws use (``R``, ``r``, ``x = d_model/sqrt(N)``,
``gqa``) are always *derived* here from the shape, never read from the file,
so a table cannot carry a ratio that disagrees with its own shape.

Reading validates every row with a pydantic schema and reports the first bad
cell as one line naming file, row and column (:class:`UserError`).
"""

from __future__ import annotations

import fcntl
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from archscale.arch import mlp_attention_ratio
from archscale.errors import UserError
from archscale.files import atomic_file

REQUIRED = ("N", "D", "loss")
SHAPE = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab")
DERIVED = ("R", "r", "x", "gqa")
FLOPS_COLUMN = "C"


class RunRow(BaseModel):
    """Schema of one run. Shape fields are optional; when present they must be positive."""

    model_config = ConfigDict(extra="allow")

    N: float
    D: float
    loss: float
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    vocab: int | None = None

    @field_validator("N", "D", "loss")
    @classmethod
    def _finite_positive(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    @field_validator(*SHAPE)
    @classmethod
    def _positive_int(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be a positive integer, got {value}")
        return value


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV, Parquet or JSON Lines by extension, with a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a runs table (.csv, .parquet or .jsonl)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot be read as {suffix[1:]}: {str(exc).splitlines()[0]}") from None
    raise UserError(f"{path}: unknown format {suffix or '(no extension)'}; use .csv, .parquet or .jsonl")


def parse_column_map(items: list[str] | None) -> dict[str, str]:
    """Parse ``--col N="Model Size"`` items into ``{"Model Size": "N"}`` (file name -> canonical)."""
    mapping: dict[str, str] = {}
    for item in items or []:
        canonical, sep, source = item.partition("=")
        canonical, source = canonical.strip(), source.strip().strip("'\"")
        if not sep or not canonical or not source:
            raise UserError(f"--col {item!r}: expected CANONICAL=\"file column\", e.g. N=\"Model Size\"")
        allowed = REQUIRED + SHAPE + (FLOPS_COLUMN,)
        if canonical not in allowed:
            raise UserError(f"--col {item!r}: {canonical!r} is not a runs-table column; one of {', '.join(allowed)}")
        mapping[source] = canonical
    return mapping


def map_columns(frame: pd.DataFrame, column_map: Mapping[str, str]) -> pd.DataFrame:
    """Copy each mapped file column to its canonical name, keeping the original.

    The file's own names stay usable in ``--where`` and ``--holdout`` (``--col N=params`` then
    ``--holdout "params >= 1e9"``). A canonical column the file already has is replaced by the mapped one.
    """
    copies = {canonical: frame[source] for source, canonical in column_map.items()}
    frame = frame.copy()
    for canonical, values in copies.items():
        frame[canonical] = values
    return frame


def load_runs(path: str | Path, column_map: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read, map, validate and derive: the one way a runs table enters archscale.

    ``column_map`` maps file column names to canonical ones. A file may give
    training FLOPs (canonical ``C``) instead of tokens; then ``D = C / (6 N)``.
    The first invalid row stops it (:func:`read_runs` can drop invalid rows instead).
    """
    return read_runs(path, column_map).frame


@dataclass
class RunsTable:
    """A loaded runs table and the rows dropped from it (``drop_invalid``), each as "row 7, column 'N': why"."""

    frame: pd.DataFrame
    dropped: list[str] = field(default_factory=list)


def read_runs(path: str | Path, column_map: Mapping[str, str] | None = None, drop_invalid: bool = False,
              hint: str = "") -> RunsTable:
    """:func:`load_runs`, optionally dropping invalid rows (missing, non-finite or non-positive values).

    ``hint`` ends the message for an invalid row when rows are not dropped (a verb names its own flag).
    The frame's index is the 0-based data row of the file, so a row reported later (an outlier, say) can be
    named as the user sees it in the file even after rows were dropped.
    """
    path = Path(path)
    frame = read_table(path)
    if column_map:
        missing = [src for src in column_map if src not in frame.columns]
        if missing:
            raise UserError(f"{path}: --col names column {missing[0]!r}, which the file does not have")
        frame = map_columns(frame, column_map)
    if "D" not in frame.columns and FLOPS_COLUMN in frame.columns and "N" in frame.columns:
        frame["D"] = pd.to_numeric(frame[FLOPS_COLUMN], errors="coerce") / (6.0 * pd.to_numeric(frame["N"], errors="coerce"))
    for column in REQUIRED:
        if column not in frame.columns:
            hint = ' (map one with --col D="..." or give training FLOPs with --col C="...")' if column == "D" else f' (map one with --col {column}="...")'
            raise UserError(f"{path}: missing column {column!r}{hint}")
    if frame.empty:
        raise UserError(f"{path}: has no rows")
    frame = frame.drop(columns=[c for c in DERIVED if c in frame.columns]).reset_index(drop=True)
    problems = row_problems(frame, stop_at_first=not drop_invalid)
    if problems and not drop_invalid:
        index, message = problems[0]
        raise UserError(f"{path}: row {index + 1}, {message}" + (f" ({hint})" if hint else ""))
    if len(problems) == len(frame):
        index, message = problems[0]
        raise UserError(f"{path}: every row is invalid (row {index + 1}, {message})")
    dropped = [f"row {index + 1}, {message}" for index, message in problems]
    return RunsTable(derive(frame.drop(index=[index for index, _ in problems])), dropped)


def validate(frame: pd.DataFrame, path: str | Path) -> None:
    """Check every row against :class:`RunRow`; raise on the first bad cell (1-based data row)."""
    problems = row_problems(frame.reset_index(drop=True), stop_at_first=True)
    if problems:
        index, message = problems[0]
        raise UserError(f"{path}: row {index + 1}, {message}")


def row_problems(frame: pd.DataFrame, stop_at_first: bool = False) -> list[tuple[int, str]]:
    """(0-based row, "column 'X': what is wrong") for every row that breaks :class:`RunRow`."""
    columns = [c for c in REQUIRED + SHAPE if c in frame.columns]
    records = frame[columns].astype(object).where(frame[columns].notna(), None).to_dict("records")
    problems: list[tuple[int, str]] = []
    for index, record in zip(frame.index, records):
        message = _row_problem(record)
        if message:
            problems.append((int(index), message))
            if stop_at_first:
                break
    return problems


def _row_problem(record: Mapping[str, object]) -> str | None:
    for column in REQUIRED:
        if record[column] is None:
            return f"column {column!r}: value is missing (NaN)"
    try:
        RunRow(**record)
    except ValidationError as exc:
        error = exc.errors()[0]
        column = error["loc"][0] if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        return f"column {column!r}: {message}" + ("" if "got" in message else f" (got {record.get(column)!r})")
    return None


def derive(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``R``, ``r``, ``x`` and ``gqa`` wherever the shape columns allow."""
    frame = frame.copy()
    for column in REQUIRED:
        frame[column] = frame[column].astype(float)
    has = set(frame.columns)
    if {"d_model", "n_layers"} <= has:
        frame["R"] = frame["d_model"] / frame["n_layers"]
    if "d_model" in has:
        frame["x"] = frame["d_model"] / np.sqrt(frame["N"])
    if {"n_heads", "n_kv_heads"} <= has:
        frame["gqa"] = frame["n_heads"] / frame["n_kv_heads"]
    if {"d_model", "n_heads", "n_kv_heads", "d_head", "d_ff"} <= has:
        frame["r"] = mlp_attention_ratio(*(frame[c] for c in ("d_model", "n_heads", "n_kv_heads", "d_head", "d_ff")))
    return frame


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str, source: str = "runs table") -> None:
    """Raise a clear error when a law needs columns the table does not have."""
    missing = [c for c in columns if c not in frame.columns or frame[c].isna().any()]
    if not missing:
        return
    explain = {
        "R": "R = d_model/n_layers needs columns d_model and n_layers",
        "x": "x = d_model/sqrt(N) needs column d_model",
        "r": "r = MLP/attention parameters needs d_model, n_heads, n_kv_heads, d_head and d_ff",
    }
    column = missing[0]
    raise UserError(f"{source}: {what} needs column {column!r} on every row" + (f" ({explain[column]})" if column in explain else ""))


def append_run(path: str | Path, row: Mapping[str, object]) -> None:
    """Append one run to a CSV runs table atomically.

    The new table is written to a temporary file in the same folder and
    renamed over the old one, under an exclusive lock, so a crash never leaves
    a half row and concurrent writers never lose one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = pd.DataFrame([dict(row)])
        frame = pd.concat([pd.read_csv(path), new], ignore_index=True) if path.exists() else new
        with atomic_file(path) as out:
            frame.to_csv(out, index=False)
