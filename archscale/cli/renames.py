"""Old flag spellings, kept working while one spelling per concept takes over.

The rule the current names follow (docs/formats.md, "Flag names"): ``--out`` is
the file or folder a command *creates*; a file that is appended to and read back
by other commands has its own name in every verb (``--runs`` for a runs table,
``--store`` for a bench results store); a token count is ``--tokens`` and every
budget takes a suffix (``1.5M``, ``1e11``). Each rename below keeps the old
spelling working: :func:`apply_renames` rewrites it before the command is
parsed and says so in one line on stderr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db", ".csv")


@dataclass(frozen=True)
class Rename:
    """``old`` in ``command`` is now ``new``; ``applies(value, args)`` limits it to some uses of the old flag."""

    command: tuple[str, ...]
    old: str
    new: str
    applies: Optional[Callable[[str, list[str]], bool]] = None


def _a_store(value: str, args: list[str]) -> bool:
    """``bench calibrate --out X`` meant the store read before ``--out`` became the profile written (a .json).

    Only without ``--store``: beside it, ``--out X.sqlite`` is the new flag misused, which the output policy refuses.
    """
    given = any(a == "--store" or a.startswith("--store=") for a in args)
    return value.lower().endswith(STORE_SUFFIXES) and not given


RENAMES: tuple[Rename, ...] = (
    Rename(("bench",), "--out", "--store"),
    Rename(("bench", "calibrate"), "--out", "--store", _a_store),
    Rename(("bench", "calibrate"), "--save", "--out"),
    Rename(("bench", "probe"), "--save", "--out"),
    Rename(("search",), "--bench", "--store"),
    Rename(("export",), "--hf", "--out"),
    Rename(("predict",), "--d", "--tokens"),
)
SUBCOMMANDS = {"bench": ("calibrate", "probe"), "data": ("prepare",)}


def command_path(args: list[str]) -> tuple[str, ...]:
    """The verb (and sub-verb) an argument list calls: ``("bench", "calibrate")``, ``("fit",)``, or ``()``."""
    words = [a for a in args[:2] if not a.startswith("-")]
    if not words or args[0] != words[0]:
        return ()
    if len(args) > 1 and args[1] in SUBCOMMANDS.get(args[0], ()):
        return (args[0], args[1])
    return (args[0],)


def _renamed_at(args: list[str], start: int, renames: list[Rename]) -> dict[int, Rename]:
    """Which arguments (by index) are an old spelling to rewrite, and as what.

    An old spelling is left alone when the command line also gives its new name
    (``bench --store a.sqlite --out b.sqlite``): two values for one flag are a
    mistake for the parser to report, not something to merge silently.
    """
    found: dict[int, Rename] = {}
    for index in range(start, len(args)):
        flag, equals, inline = args[index].partition("=")
        value = inline if equals else (args[index + 1] if index + 1 < len(args) else "")
        rename = next((r for r in renames if r.old == flag and (r.applies is None or r.applies(value, args))), None)
        if rename is not None:
            found[index] = rename
    kept = {args[i].partition("=")[0] for i in range(start, len(args)) if i not in found and args[i].startswith("--")}
    return {index: rename for index, rename in found.items() if rename.new not in kept}


def apply_renames(args: list[str], note: Callable[[str], None]) -> list[str]:
    """``args`` with every old spelling replaced by its new one; ``note`` gets one line per replacement."""
    path = command_path(args)
    renames = [r for r in RENAMES if r.command == path]
    if not renames:
        return list(args)
    shown = " ".join(("archscale",) + path)
    out = list(args)
    for index, rename in _renamed_at(args, len(path), renames).items():
        _flag, equals, inline = args[index].partition("=")
        note(f"note: `{shown} {rename.old}` is now `{rename.new}`; the old spelling still works for now")
        out[index] = f"{rename.new}={inline}" if equals else rename.new
    return out
