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

import csv
import fcntl
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from archscale.shapes.architecture import mlp_attention_ratio
from archscale.shapes.moe_candidates import dense_reference_d_ff
from archscale.io.errors import UserError
from archscale.io.files import atomic_file
from archscale.io.outputs import Kind

REQUIRED = ("N", "D", "loss")
SHAPE = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab")
DERIVED = ("R", "r", "x", "gqa", "G", "expansion")
FLOPS_COLUMN = "C"
N_KINDS = {  # what a runs table's N counts: laws fitted on one kind do not predict on another
    "non-embedding": "every parameter outside the token embedding and output head, norms included (what archscale train records)",
    "strict": "the non-embedding weight matrices only (attention and MLP; no norms or biases)",
    "total": "every parameter, embeddings and output head included",
    "unstated": "the runs table's N as given; the table does not say what it counts (fit --n-kind states it)",
}


def n_kind(frame: pd.DataFrame, stated: str) -> str:
    """What N counts: the user's ``--n-kind``; ``auto`` is non-embedding for archscale's own runs, else unstated."""
    if stated not in (*N_KINDS, "auto"):
        raise UserError(f"--n-kind {stated!r}: choose one of {', '.join(k for k in N_KINDS if k != 'unstated')} or auto")
    if stated != "auto":
        return stated
    return "non-embedding" if "recipe_hash" in frame.columns or "config_hash" in frame.columns else "unstated"


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
            raise ValueError("must be a finite number")
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator(*SHAPE)
    @classmethod
    def _positive_int(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive integer")
        return value


HASH_COLUMNS = ("recipe_hash", "config_hash", "data_hash")
"""Columns of hex digests, read as text: a digest of digits alone (``012345678901``) or digits around one ``e``
(``12e456789012``) would otherwise be read as a number, and no longer match the run it names."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV, Parquet or JSON Lines by extension, with a clear error for anything else (or a damaged CSV)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a runs table (.csv, .parquet or .jsonl)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            check_intact(path)
            named = [name for name in csv_header(path) or [] if name.strip()]
            _refuse_duplicated_columns(pd.DataFrame(columns=named), path)  # pandas would rename the second to X.1
            return pd.read_csv(path, dtype={name: str for name in HASH_COLUMNS})
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype={name: str for name in HASH_COLUMNS})
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
    targets = list(column_map.values())
    twice = sorted({canonical for canonical in targets if targets.count(canonical) > 1})
    if twice:
        raise UserError(f"--col: column {twice[0]!r} appears twice after mapping "
                        f"({', '.join(repr(s) for s, c in column_map.items() if c == twice[0])}); map one file column to it")
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
    _refuse_duplicated_columns(frame, path)
    if "D" not in frame.columns and FLOPS_COLUMN in frame.columns and "N" in frame.columns:
        _require_numbers(frame, ("N", FLOPS_COLUMN), path)  # else a bad N would be blamed on the derived D
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


def _refuse_duplicated_columns(frame: pd.DataFrame, path: str | Path) -> None:
    """Two columns of one name (in the file, or after ``--col``) would make "the" column ambiguous."""
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise UserError(f"{path}: column {duplicated[0]!r} appears twice (in the file or after --col); "
                        "keep one, or map the other to a new name with --col")


def _require_numbers(frame: pd.DataFrame, columns: tuple[str, ...], path: str | Path) -> None:
    """The first cell of ``columns`` that is not a number, as one line naming row and column."""
    for column in columns:
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = numbers.isna() & frame[column].notna()
        if bad.any():
            index = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: row {index + 1}, column {column!r}: not a number (got {frame[column].iloc[index]!r})")


def validate(frame: pd.DataFrame, path: str | Path) -> None:
    """Check every row against :class:`RunRow`; raise on the first bad cell (1-based data row)."""
    problems = row_problems(frame.reset_index(drop=True), stop_at_first=True)
    if problems:
        index, message = problems[0]
        raise UserError(f"{path}: row {index + 1}, {message}")


def row_problems(frame: pd.DataFrame, stop_at_first: bool = False) -> list[tuple[int, str]]:
    """(0-based row, "column 'X': what is wrong") for every row that breaks :class:`RunRow`."""
    columns = [c for c in (*REQUIRED, *SHAPE, FLOPS_COLUMN) if c in frame.columns]
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
    record = dict(record)
    if FLOPS_COLUMN in record:
        problem = _flops_problem(record.pop(FLOPS_COLUMN))
        if problem:
            return problem
    try:
        RunRow(**record)
    except ValidationError as exc:
        error = exc.errors()[0]
        column = error["loc"][0] if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        return f"column {column!r}: {message}" + ("" if "got" in message else f" (got {record.get(column)!r})")
    return None


def _flops_problem(value: object) -> str | None:
    """What is wrong with one run's training FLOPs, if anything. ``C`` names the isoFLOP budget a run belongs to:
    a missing cell would silently drop the column for every run, and text would stop a fit in a traceback."""
    if value is None:
        return f"column {FLOPS_COLUMN!r}: value is missing (NaN); give every run's training FLOPs, or drop the column"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"column {FLOPS_COLUMN!r}: not a number (got {value!r})"
    if not (math.isfinite(number) and number > 0):
        return f"column {FLOPS_COLUMN!r}: training FLOPs must be a positive finite number (got {value!r})"
    return None


def derive(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``R``, ``r``, ``x`` and ``gqa`` (and the MoE laws' ``G`` and ``expansion``) wherever the columns allow."""
    frame = frame.copy()
    for column in [*REQUIRED, *([FLOPS_COLUMN] if FLOPS_COLUMN in frame.columns else [])]:
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
    if "n_experts" in has:
        _derive_moe(frame, has)
    return frame


def _derive_moe(frame: pd.DataFrame, has: set[str]) -> None:
    """The MoE laws' inputs (:mod:`archscale.laws.moe`), in place: ``expansion``, ``G`` and dense rows' ``N_active``.

    A dense row of a mixed table (``n_experts`` empty) is E = 1 with every parameter active, so the joint law
    (Ludziejewski et al. 2025) fits dense and MoE runs together; it has no granularity, so ``G`` stays empty there
    and the granularity law (fitted on MoE runs only) refuses it by name.
    """
    experts = pd.to_numeric(frame["n_experts"], errors="coerce")
    dense = experts.isna()
    if "experts_per_token" in has:
        routed = experts / pd.to_numeric(frame["experts_per_token"], errors="coerce")
        frame["expansion"] = routed.where(~dense, 1.0)
    if {"d_model", "expert_d_ff"} <= has:
        frame["G"] = dense_reference_d_ff(frame["d_model"]) / pd.to_numeric(frame["expert_d_ff"], errors="coerce")
    if "N_active" in has:
        frame["N_active"] = pd.to_numeric(frame["N_active"], errors="coerce").where(~dense, frame["N"])


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str, source: str = "runs table") -> None:
    """Raise a clear error when a law needs columns the table does not have."""
    missing = [c for c in columns if c not in frame.columns or frame[c].isna().any()]
    if not missing:
        return
    explain = {
        "R": "R = d_model/n_layers needs columns d_model and n_layers",
        "x": "x = d_model/sqrt(N) needs column d_model",
        "r": "r = MLP/attention parameters needs d_model, n_heads, n_kv_heads, d_head and d_ff",
        "G": "granularity G = 4 d_model / expert_d_ff needs d_model and expert_d_ff: MoE runs only, leave dense ones "
             "out with --where",
        "expansion": "expansion = n_experts / experts_per_token needs both columns on every MoE row",
        "N_active": "the non-embedding parameters one token uses, a column of MoE runs",
    }
    column = missing[0]
    if column in MOE_LAW_COLUMNS and not any(c in frame.columns for c in MOE_RUN_COLUMNS):
        raise UserError(f"{source}: {what} is a Mixture-of-Experts law and these runs are dense (no "
                        f"{', '.join(MOE_RUN_COLUMNS)} column); fit a dense law such as chinchilla, or add MoE runs")
    raise UserError(f"{source}: {what} needs column {column!r} on every row" + (f" ({explain[column]})" if column in explain else ""))


TRAINED_RUN_COLUMNS = (*REQUIRED, *SHAPE, "train_loss", "val_loss", "tokens_per_s", "mfu", "startup_steps", "startup_s",
                       "compiled", "recipe_hash", "data_hash", "run_dir",
                       "name", "steps", "seed")
"""The columns of the row ``train`` appends (``archscale.train.loop`` builds it): the canonical runs-table schema."""

MOE_RUN_COLUMNS = ("n_experts", "experts_per_token", "expert_d_ff", "N_active")
"""What a Mixture-of-Experts run's row adds after the shape columns: E, k, each routed expert's width, and the
non-embedding parameters one token uses (``N`` counts every expert). A dense run's row has none of them, so it is
what it always was; in a table holding both, dense rows leave these cells empty."""

MOE_LAW_COLUMNS = ("G", "expansion", "N_active")
"""What the MoE laws read beyond N and D (:mod:`archscale.laws.moe`): derived from :data:`MOE_RUN_COLUMNS`."""

APPENDED_RUN_COLUMNS = (*TRAINED_RUN_COLUMNS, *MOE_RUN_COLUMNS)
"""Every column ``train`` may append: what a runs table it appends to may hold."""

RENAMED_RUN_COLUMNS = {"config_hash": "recipe_hash", "warmup_steps": "startup_steps", "warmup_s": "startup_s"}
"""Old runs-table column names and their current ones; tables written before a rename are still read and appended
to under their own header. ``recipe_hash`` (the hash of a run's config.json and train.json) was called
``config_hash``, the name the bench store gives the hash of a shape alone. ``startup_steps`` and ``startup_s`` (the
first steps of a session, compilation included, left out of ``tokens_per_s``) were ``warmup_steps`` and
``warmup_s``, which read as the recipe's learning-rate warm-up (``warmup_steps`` in train.json)."""


def recipe_hashes(frame: pd.DataFrame) -> pd.Series:
    """The recipe hash of each row of a runs table, under its current or its old column name (empty if neither)."""
    for column in ("recipe_hash", *[old for old, new in RENAMED_RUN_COLUMNS.items() if new == "recipe_hash"]):
        if column in frame.columns:
            return frame[column]
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def current_names(row: Mapping[str, object]) -> dict[str, object]:
    """A row (or a run's result.json) with old column names replaced by the current ones."""
    return {RENAMED_RUN_COLUMNS.get(key, key): value for key, value in row.items()}


def csv_header(path: Path) -> list[str] | None:
    """The column names on a CSV file's first line (None for an empty file)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None)
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not a CSV runs table (not UTF-8 text)") from None
    except csv.Error as exc:
        raise UserError(f"{path}: cannot be read as CSV ({exc})") from None


CONFLICT_MARKERS = ("<<<<<<<", "|||||||", "=======", ">>>>>>>")
"""How the lines git writes into a file it could not merge begin."""


def check_intact(path: Path, where: str | None = None) -> None:
    """Refuse a CSV table damaged in a way pandas would read as plausible rows, naming the first damaged line.

    A row cut short (a write that stopped mid-row) reads as a run with empty
    cells, git's conflict markers as rows of NaN next to both sides' rows, NUL
    bytes as cells: ``fit`` would fit them, and ``train`` and ``sweep`` would
    train for minutes and then append after them, making the damage look like
    data. So every line is checked before any work, by every reader and appender.
    A cut inside a table's last cell leaves every row whole and cannot be told
    from a short value.
    """
    where = where or str(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            width: int | None = None
            rows = 0
            for record in reader:
                if not record:
                    continue  # a blank line, which pandas skips too
                line = reader.line_num
                if record[0].startswith(CONFLICT_MARKERS):
                    raise UserError(f"{where}: line {line} is a git conflict marker ({record[0][:20]!r}): the file is "
                                    "mid-merge; keep the rows you want, delete the marker lines, then run again")
                problem = _damage(record, width)
                if problem:
                    label = f"line {line} (the header)" if width is None else f"row {rows + 1} (line {line})"
                    raise UserError(f"{where}: {label} {problem}")
                if width is None:
                    width = len(record)
                else:
                    rows += 1
    except UnicodeDecodeError:
        raise UserError(f"{where}: is not a CSV runs table (not UTF-8 text)") from None
    except csv.Error as exc:
        raise UserError(f"{where}: cannot be read as CSV ({exc})") from None


def _damage(record: list[str], width: int | None) -> str | None:
    """What is wrong with one CSV record besides a conflict marker (``width``: the header's cells; None for the
    header itself), or None."""
    if any("\0" in cell for cell in record):
        return ("holds NUL bytes: the file was damaged (a crash or a full disk while it was written); "
                "delete that line or restore the file from a copy")
    if width is not None and len(record) < width:
        return (f"has {len(record)} of the header's {width} cells: it was cut short (a write that stopped mid-row); "
                "complete or delete it, then run again")
    if width is not None and len(record) > width:
        return (f"has {len(record)} cells but the header has {width}: a stray comma or two rows run together; "
                "fix or delete it, then run again")
    return None


def check_appendable(path: str | Path, flag: str = "--runs", columns: tuple[str, ...] = APPENDED_RUN_COLUMNS) -> None:
    """Refuse, before anything is trained, a runs table a new row with ``columns`` would corrupt.

    A missing or empty file is fine (the row starts it). An existing one must be
    a CSV whose columns are all among ``columns`` and include ``N``, ``D`` and
    ``loss``: a table of another schema (``data/chinchilla_epoch.csv``, with
    ``C`` instead of ``D``) is refused rather than given empty columns. A table
    of runs-table columns that lacks some of the row's (a hand-made table of
    shapes and losses) is extended by them: its rows keep their values and get
    empty cells. A damaged table (a row cut short, conflict markers, NUL bytes:
    :func:`check_intact`) is refused too, rather than appended after.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if path.suffix.lower() != ".csv":
        raise UserError(f"{where}: rows are appended to a CSV runs table; use a name ending in .csv")
    if path.is_dir():
        raise UserError(f"{where}: is a folder; give a CSV file name, e.g. {path / 'runs.csv'}")
    if not path.exists():
        return
    check_intact(path, where)
    header = csv_header(path)
    if header is None:
        return
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise UserError(f"{where}: column {duplicated[0]!r} appears more than once in the header; fix the file "
                        "or append to a new one")
    foreign = [name for name in header if name not in columns and RENAMED_RUN_COLUMNS.get(name) not in columns]
    missing = [name for name in REQUIRED if name in columns and name not in header]
    if foreign or missing:
        parts = ([f"has {', '.join(foreign[:4])}" + (" ..." if len(foreign) > 4 else "") + ", which train does not write"]
                 if foreign else []) + ([f"lacks {', '.join(missing)}"] if missing else [])
        raise UserError(f"{where}: is not a runs table that train appends to (it {' and '.join(parts)}); "
                        f"nothing was changed: append to a new file such as {path.with_name(path.stem + '-runs.csv')}")


def _cell(value: object) -> str:
    """How one value is written to the CSV (empty for missing numbers, as pandas writes them)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if hasattr(value, "item"):  # numpy scalars
        return _cell(value.item())
    return str(value)


def append_run(path: str | Path, row: Mapping[str, object]) -> None:
    """Append one run to a CSV runs table atomically, leaving the rows already there as they were.

    Under an exclusive lock on the table's folder (so no lock file is left
    behind), the file is checked against the row's columns
    (:func:`check_appendable`), then copied with the new line added to a
    temporary sibling that is renamed over it: a crash never leaves a half
    row, concurrent writers never lose one, and the file keeps its mode. The
    old lines keep their exact bytes, unless the row brings columns the table
    lacks: then the header gains them and the old rows get empty cells. A table
    with an old column name (:data:`RENAMED_RUN_COLUMNS`) gets the value under that name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        check_appendable(path, "", tuple(dict.fromkeys((*row, *MOE_RUN_COLUMNS))))  # a dense row beside MoE rows
        header = (csv_header(path) if path.exists() else None) or []
        old_names = {RENAMED_RUN_COLUMNS[name]: name for name in header if name in RENAMED_RUN_COLUMNS}
        row = {old_names.get(key, key): value for key, value in row.items()}  # a table under its old header keeps it
        added = [name for name in row if name not in header]
        old = path.read_bytes() if path.exists() and header else b""
        if added and old:
            old = _with_columns(path, len(header), added)
        line = io.StringIO()
        writer = csv.writer(line, lineterminator="\n")
        if not old:
            writer.writerow(list(row))
        writer.writerow([_cell(row.get(name)) for name in (header + added if old else list(row))])
        with atomic_file(path, "wb") as out:
            out.write(old if not old or old.endswith(b"\n") else old + b"\n")
            out.write(line.getvalue().encode("utf-8"))
    finally:
        os.close(folder)  # closing releases the lock


def _with_columns(path: Path, width: int, added: list[str]) -> bytes:
    """The table's text with ``added`` columns after its ``width`` columns: the header named, the rows empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with open(path, newline="", encoding="utf-8") as handle:
        for index, record in enumerate(csv.reader(handle)):
            if record:
                writer.writerow(record + (added if index == 0 else [""] * len(added)))
    return out.getvalue().encode("utf-8")


def _check_runs_output(flag: str, path: Path) -> None:
    check_appendable(path, flag)


RUNS_TABLE = Kind("a CSV runs table", (".csv",), appends=True, check=_check_runs_output)
"""The runs table as an output (``--runs``): a CSV that ``train`` and ``sweep`` append rows to."""
