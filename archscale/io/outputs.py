"""The output policy: one set of rules for every file or folder a command writes, checked before any work.

Each command makes one declarative call near its top::

    check_outputs(("--out", out, "json"), ("--plot", plot, "png"), inputs=(runs, reference))

and :func:`check_outputs` refuses, with one line (:class:`~archscale.io.errors.UserError`,
exit 2) and before anything is computed or written:

* an output that is one of the command's inputs (the same path once links are
  resolved, or the same file by :func:`os.path.samefile`), or a folder the
  command replaces that holds an input;
* two outputs that are the same path;
* an output whose name does not end in its format's extension (``--export
  x.parquet`` when CSV is written, ``--out runs.csv`` for a JSON fit);
* a folder where a file is expected, a file where a folder is expected (the
  output or any folder above it);
* a missing folder more than one level deep. The rule: archscale creates the
  one missing folder an output sits in (``--out results/fit.json`` creates
  ``results/``, and the command says so), never a chain of them (a typo such as
  ``/nonexistent/dir/fit.json`` is refused rather than turned into folders);
* a folder it cannot write in (read-only file system, permission denied), and
  a file it appends to that it cannot write;
* what a format needs of an existing file it appends to or replaces: a runs
  table must have the columns ``train`` appends (:data:`archscale.fit.runs.RUNS_TABLE`),
  a results store must be a readable SQLite store (:data:`archscale.bench.store.STORE`),
  an ``--emit`` folder may hold only configs emitted by an earlier search
  (:func:`check_emit_dir`).

Adding a format is adding a :class:`Kind`: to :data:`KINDS` when it needs nothing but a path, or beside the
code that owns the format when its check reads the file (the runs table, the store), so that this policy
imports nothing above it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from archscale.io.errors import UserError, add_hint, failure_cause

PathLike = Union[str, Path]
OutputSpec = tuple[str, Optional[PathLike], Union[str, "Kind"]]
"""(flag, path or None when not given, a kind name in :data:`KINDS` or a :class:`Kind` its owner defines)."""

EMITTED_NAME = re.compile(r"cand-\d+")
EMITTED_FILES = frozenset({"config.json", "train.json", "candidate.json"})


@dataclass(frozen=True)
class Kind:
    """A format a command writes: its name for the user, its extensions, and how it treats an existing target.

    ``suffixes`` empty means a folder. ``appends``: an existing file is added
    to (so it must be writable and already of this format). ``replaces``: a
    folder whose contents the command replaces (so it must not hold an input).
    ``check(flag, path)`` adds format-specific checks of an existing target.
    """

    noun: str
    suffixes: tuple[str, ...] = ()
    appends: bool = False
    replaces: bool = False
    check: Callable[[str, Path], None] | None = None
    hint: str = ""

    @property
    def is_dir(self) -> bool:
        return not self.suffixes


def _check_emit(flag: str, path: Path) -> None:
    check_emit_dir(path, flag)


KINDS: dict[str, Kind] = {
    "json": Kind("a JSON file", (".json",)),
    "png": Kind("a PNG image", (".png",)),
    "csv": Kind("a CSV file", (".csv",)),
    "table": Kind("a CSV or Parquet table", (".csv", ".parquet", ".pq")),
    "dir": Kind("a folder"),
    "data-dir": Kind("a prepared data folder", replaces=True),
    "configs": Kind("a folder of emitted configs", replaces=True, check=_check_emit),
}

created_folders: list[tuple[str, Path]] = []
"""(flag, folder) pairs the last :func:`check_outputs` allowed to be created; the CLI reports them on success."""


def check_outputs(*outputs: OutputSpec, inputs: Iterable[PathLike | None] = ()) -> None:
    """Refuse, before any work, outputs that would destroy an input, collide, or cannot be written (see module doc).

    ``inputs`` are whatever the command reads (files, folders, globs, or names
    that are not paths at all, such as presets: only existing paths count).
    """
    given = [(flag, Path(path), _kind(name)) for flag, path, name in outputs if path is not None and str(path) != ""]
    read = _existing_inputs(inputs)
    for flag, path, kind in given:
        _refuse_input(flag, path, kind, read)
    _refuse_collisions(given)
    created_folders.clear()
    for flag, path, kind in given:
        _check_target(flag, path, kind)
        if kind.check is not None:
            kind.check(flag, path)


@contextlib.contextmanager
def written_together(*outputs: tuple[str, Optional[PathLike]]) -> Iterator[None]:
    """A command's outputs, (flag, path or None), appear together or not at all.

    Each file is written atomically on its own, but a command that writes a plot, then configs, then its result
    can fail between them (a full disk) and leave the first without the last. A failure inside this block removes
    every output that did not exist before it, and the folder the policy created for them when it is left empty;
    an output that existed before may already have been replaced, and the message says which.
    """
    given = [(flag, Path(path)) for flag, path in outputs if path is not None and str(path) != ""]
    new = [(flag, path) for flag, path in given if not path.exists()]
    earlier = [f"{flag} {path}" for flag, path in given if path.exists()]
    try:
        yield
    except BaseException as exc:
        removed = [flag for flag, path in new if _remove(path)]
        for _, folder in created_folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: an output's own folder, not the user's
        said = [f"removed what it had written ({', '.join(removed)})"] if removed else []
        said += [f"{', '.join(earlier)} existed before and may have been replaced"] if earlier else []
        add_hint(exc, "; ".join(said + ["fix that and run the command again"]))
        raise


def _remove(path: Path) -> bool:
    """Remove an output file or folder; whether there was one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return True
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _kind(name: str | Kind) -> Kind:
    if isinstance(name, Kind):
        return name
    if name not in KINDS:
        raise ValueError(f"unknown output kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


def _existing_inputs(inputs: Iterable[PathLike | None]) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        text = str(item)
        if any(ch in text for ch in "*?["):
            found.extend(Path(p) for p in glob.glob(text, recursive=True))
        elif Path(text).expanduser().exists():
            found.append(Path(text).expanduser())
    return found


def same_path(a: Path, b: Path) -> bool:
    """The same file or folder: equal once links are resolved, or the same inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_input(flag: str, path: Path, kind: Kind, inputs: Sequence[Path]) -> None:
    for item in inputs:
        if same_path(path, item):
            raise UserError(f"{flag} {path}: is one of this command's inputs ({item}); writing it would destroy it: "
                            "choose another path")
        if kind.replaces and path.resolve() in item.resolve().parents:
            raise UserError(f"{flag} {path}: holds {item}, one of this command's inputs, and its contents would be "
                            "replaced: choose another folder")


def _refuse_collisions(given: Sequence[tuple[str, Path, Kind]]) -> None:
    for index, (flag, path, _) in enumerate(given):
        for other_flag, other, _ in given[index + 1:]:
            if same_path(path, other):
                raise UserError(f"{flag} and {other_flag} are the same path ({path}): one would overwrite the other; "
                                "give each its own")


def _check_target(flag: str, path: Path, kind: Kind) -> None:
    """Extension, file-vs-folder, missing folders and write permission of one output."""
    if kind.is_dir and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is a file, but {kind.noun} is written there; choose another path")
    if not kind.is_dir and path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name, e.g. {path / ('out' + kind.suffixes[0])}")
    if not kind.is_dir and path.suffix.lower() not in kind.suffixes:
        endings = ", ".join(kind.suffixes[:-1]) + (" or " if len(kind.suffixes) > 1 else "") + kind.suffixes[-1]
        raise UserError(f"{flag} {path}: writes {kind.noun}; use a name ending in {endings}{kind.hint}")
    missing = _missing_folders(flag, path)
    if len(missing) > 1:
        raise UserError(f"{flag} {path}: folder {missing[-1]} does not exist (archscale creates at most the one "
                        f"folder an output sits in; create {missing[0]} first if that path is what you meant)")
    existing = path.parent if not missing else missing[0].parent
    _require_writable(flag, existing, "folder")
    if path.exists():
        if kind.is_dir:
            _require_writable(flag, path, "folder")
        elif kind.appends:
            _require_writable(flag, path, "file")
    created_folders.extend((flag, folder) for folder in missing)


def _missing_folders(flag: str, path: Path) -> list[Path]:
    """Folders above ``path`` that do not exist yet, nearest first; a file in the way is refused."""
    missing: list[Path] = []
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{flag} {path}: {folder} is a file, not a folder")
            break
        missing.append(folder)
    return missing


def _require_writable(flag: str, target: Path, what: str) -> None:
    """``target`` (a folder to write in, or a file to append to) must be writable by this process.

    The permission bits are not the answer for every process: root passes them everywhere, and a kernel file
    system (``/sys``, ``/proc``) refuses what they allow. So a folder is tried: a file created in it and removed."""
    if os.access(target, os.W_OK | (os.X_OK if what == "folder" else 0)):
        cause = _write_probe(target) if what == "folder" else None
        if cause is None:
            return
    else:
        try:
            read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        cause = "read-only file system" if read_only else "permission denied"
    if what == "folder":
        raise UserError(f"{flag}: cannot write in {target} ({cause}); choose another path")
    raise UserError(f"{flag} {target}: cannot be written ({cause}); choose another path")


def _write_probe(folder: Path) -> str | None:
    """Create and remove an empty file in ``folder``: None when that works, else the plain cause."""
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".archscale-write-check-")
    except OSError as exc:
        return failure_cause(exc)
    os.close(handle)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


# ---- the --emit folder ---------------------------------------------------------------
def emitted_config_dirs(directory: Path) -> tuple[list[Path], list[str]]:
    """Config folders a previous ``search --emit`` wrote here (replaceable), and anything else found (blockers).

    An emitted folder is ``cand-NN`` holding only ``config.json``, ``train.json``
    and ``candidate.json``. A ``cand-NN`` with a trained ``run/`` or any other
    file is not replaceable: deleting it would lose work.
    """
    replaceable: list[Path] = []
    blockers: list[str] = []
    if not directory.is_dir():
        return replaceable, blockers
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".emit-"):
            continue  # a staging folder a killed search left: replaced like the rest
        if not (entry.is_dir() and EMITTED_NAME.fullmatch(entry.name)):
            blockers.append(entry.name)
            continue
        extra = sorted(child.name for child in entry.iterdir() if child.name not in EMITTED_FILES)
        if extra or not (entry / "candidate.json").is_file():
            blockers.append(f"{entry.name}/{extra[0]}" if extra else f"{entry.name} (no candidate.json)")
        else:
            replaceable.append(entry)
    return replaceable, blockers


def check_emit_dir(directory: Path, flag: str = "--emit") -> None:
    """Refuse an ``--emit`` folder whose stale contents would be mixed with (or lost among) the new configs.

    Configs from an earlier search are replaced as a whole set (so no stale
    ``cand-NN`` stays for ``sweep`` to train); anything else (a trained run,
    the user's own files) stops the command.
    """
    _, blockers = emitted_config_dirs(Path(directory))
    if blockers:
        shown = ", ".join(blockers[:3]) + (f" and {len(blockers) - 3} more" if len(blockers) > 3 else "")
        raise UserError(f"{flag} {directory}: holds {shown}, which an earlier search did not emit (a trained run or "
                        "your own files); emit into a new or empty folder")
