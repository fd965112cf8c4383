"""Stage: the command line, a thin Typer layer over the library (it may import every stage; none imports it).

In: argv. Out: tables on the terminal, ``--json``, files through the stages, exit code 0 or 2.

Each verb group lives in its own module under ``archscale.cli`` and registers
its commands on :data:`app`; none holds logic beyond parsing flags, calling
the library and printing. :func:`main` is the console-script entry point: it
turns :class:`~archscale.io.errors.UserError` into one line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup, TyperOption

from archscale import __version__
from archscale.io.errors import UserError


def _fold_long_option_names() -> None:
    """Help shortens an option name its column cannot hold (``--experts-per-t…`` at 80 columns), so the flag can be
    neither read nor copied; its names fold onto a second line instead (rich's "fold" overflow)."""
    from typer import rich_utils

    for name in ("highlighter", "negative_highlighter"):
        highlighter = getattr(rich_utils, name)
        if getattr(highlighter, "folds", False):
            continue

        class Folding(type(highlighter)):  # type: ignore[misc, valid-type]
            folds = True

            def __call__(self, text: Any) -> Any:
                shown = super().__call__(text)
                shown.overflow = "fold"
                return shown

        setattr(rich_utils, name, Folding())


_fold_long_option_names()


def _hide_flag_types(command: Any, ctx: Any) -> None:
    """Help lists an on/off flag as ``--json``, not ``--json <bool>``: a flag takes no value to describe."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


def _reflow(text: str | None) -> str | None:
    """A docstring's paragraphs each on one line: the help's renderer keeps a docstring's line breaks after the first."""
    if not text:
        return text
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(text).split("\n\n"))


EXAMPLE_STARTS = ("archscale ", "torchrun ")
SHELL_WORD = re.compile(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""")
CONTINUATION_INDENT = "    "


def _example_chunks(command: str) -> list[str]:
    """The pieces a line may break between: shell words (quotes kept whole), a flag with its value, the trailing comment."""
    words = SHELL_WORD.findall(command)
    chunks: list[str] = []
    for index, word in enumerate(words):
        if word.startswith("#"):  # a comment: the rest of the line as written
            chunks.append(command[command.index(word, len(" ".join(words[:index]))):].strip())
            break
        if chunks and chunks[-1].startswith("-") and " " not in chunks[-1] and not word.startswith(("-", "#")):
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    return chunks


def shell_lines(command: str, width: int) -> list[str]:
    """One example as lines a shell reads as one command: broken before ``width`` with `` \\`` continuations.

    Help used to let the terminal renderer wrap examples at any space, so a copied example became several broken
    commands. Breaks fall only between shell words (a quoted argument stays whole, a flag stays with its value);
    a piece longer than the width gets a line of its own rather than a break inside it.
    """
    lines = [""]
    for chunk in _example_chunks(command):
        if lines[-1] and len(lines[-1]) + 1 + len(chunk) + 2 > width:
            lines[-1] += " \\"
            lines.append(CONTINUATION_INDENT + chunk)
        else:
            lines[-1] += ("" if not lines[-1] else "  " if chunk.startswith("#") else " ") + chunk
    return lines


def print_epilog(epilog: str) -> None:
    """A verb's epilog below its help: examples as copyable commands (:func:`shell_lines`), other paragraphs wrapped."""
    from rich.padding import Padding
    from rich.text import Text

    out = Console(highlight=False)
    width = max(40, out.width - 2)  # the one-column padding either side, as Typer pads its panels
    out.print()
    for paragraph in epilog.split("\n\n"):
        if paragraph.startswith(EXAMPLE_STARTS):
            for line in shell_lines(paragraph, width):
                out.print(" " + line, markup=False, soft_wrap=True)
        else:
            out.print(Padding(Text(paragraph), (0, 1)))
        out.print()


class Command(TyperCommand):
    """Every archscale verb: Typer's command, its docstring reflowed, flags shown without a value type in ``--help``,
    and its examples printed as commands one can copy (:func:`print_epilog`), not wrapped like prose."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _refuse_repeated_options(self, args)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_types(self, ctx)
        self.help = _reflow(self.help)
        epilog, self.epilog = self.epilog, None
        try:
            super().format_help(ctx, formatter)
        finally:
            self.epilog = epilog
        if epilog:
            print_epilog(epilog)


def _refuse_repeated_options(command: Any, args: list[str]) -> None:
    """A flag that takes one value, given twice, is refused: the parser would keep the last and drop the first
    without a word (``plan --budget 1e22 --budget 1e23`` planned 1e23 alone). Repeatable flags (``--fix``) and
    on/off switches are left to the parser."""
    single = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or getattr(param, "multiple", False) \
                or getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        for name in (*param.opts, *getattr(param, "secondary_opts", ())):
            single[name] = param
    seen: dict[str, tuple[str, str]] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            break
        name, has_value, value = arg.partition("=")
        param = single.get(name) if arg.startswith("-") else None
        if param is None:
            index += 1
            continue
        value = value if has_value else (args[index + 1] if index + 1 < len(args) else "")
        if param.name in seen:
            first_name, first_value = seen[param.name]
            raise UserError(f"{name} is given twice ({first_name} {first_value}, then {name} {value}); it takes one "
                            "value, and the first would be dropped without a word: give it once (a flag that takes "
                            "several values takes them comma-separated)")
        seen[param.name] = (name, value)
        index += 1 if has_value else 2


class Group(TyperGroup):
    """The verb list. ``bench calibrate`` and ``bench probe`` are commands of their own (own flags, own
    ``--help``) registered under two-word names, while ``bench SPEC...`` stays one command."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if len(args) > 1 and f"{args[0]} {args[1]}" in self.commands:
            name = f"{args[0]} {args[1]}"
            return name, self.commands[name], args[2:]
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_types(self, ctx)
        super().format_help(ctx, formatter)


def examples(*lines: str) -> str:
    """A verb's epilog: its examples, one command a line, runnable from the repository root as written.

    tests/test_documented_path.py runs every one (outputs go to ``out/``, which
    git ignores); an example that cannot run on a CPU-only machine ends with
    ``# needs: ...`` saying what it needs, and the test skips it with that reason.
    """
    return "Examples (from the repository root; outputs go to out/):\n\n" + "\n\n".join(lines)


EMIT_TINY_CONFIGS = ("archscale search --fit experiments/results/cpu_mini_study/cond.json --n 200K --tokens 1.5M --layers 4 "
                     "--head-dim 16 --vocab 256 --d-multiple 16 --ff-multiple 16 --gqa 1,2 --batch 8 --input-len 64 "
                     "--output-len 16 --slack 0.1 --top-k 2 --emit out/configs-tiny")
"""The README's tiny search (the CPU mini-study's law, two shapes a CPU trains in seconds): the first step of the
examples of the verbs that need config folders (train, sweep, export, bench)."""

app = typer.Typer(
    cls=Group,
    name="archscale",
    help="Choose an LLM architecture before you pretrain it: fit architecture-aware scaling laws, "
    "search shapes for throughput at a loss target, benchmark and train them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Rich wraps tables to 80 columns when stdout is not a terminal; tables here are wider.
console = Console(width=None if sys.stdout.isatty() else 160)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"archscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """archscale: architecture-aware scaling laws and inference-efficient shape search."""


@contextlib.contextmanager
def bootstrap_bar(samples: int, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over bootstrap resamples (on stderr, gone when done), or no callback when there is nothing
    to show (no resamples, or JSON on stdout)."""
    if not samples or quiet:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("bootstrap", total=samples)
        yield lambda n: bar.advance(task, n)


def print_json(payload: Any) -> None:
    """Write a JSON document to stdout (for ``--json``)."""
    from archscale.io.files import jsonable

    sys.stdout.write(json.dumps(jsonable(payload), indent=2) + "\n")


def _register_commands() -> None:
    """Import every verb module so its commands attach to :data:`app`."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{module.name}")


def _closest_option(option: str, possibilities: Any) -> str | None:
    """The one known flag ``option`` is most likely a typo of, or None when none is close.

    Click lists every loosely similar flag (``--hodlout`` brought ``--out`` and
    ``--plot`` beside ``--holdout``); one likely answer is what a user can act on.
    """
    import difflib

    matches = difflib.get_close_matches(option, list(possibilities or ()), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _usage_error(exc: Any) -> str:
    """A usage error as one line: the message, where an unknown flag belongs (another verb that has it, or else
    the closest flag of this verb), where help is."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "archscale"
    option = getattr(exc, "option_name", None)
    owners: list[str] = []
    if option and ctx is not None and ctx.parent is not None:
        owners = [name for name, verb in ctx.parent.command.commands.items()
                  if any(option in param.opts for param in verb.params)]
    if not getattr(exc, "possibilities", None):
        message = exc.format_message()
    else:  # an unknown flag: Click's message without its list of loose guesses
        message = exc.message
        closest = None if owners else _closest_option(option, exc.possibilities)
        if closest is not None:
            message += f"; did you mean {closest}?"
    if 0 < len(owners) <= 3:  # a flag most verbs have (--out) says nothing about where the user meant to be
        message += f"; {option} is an option of " + ", ".join(f"archscale {name}" for name in owners)
    return f"{message} (see {command} --help)"


def main() -> None:
    """Console-script entry point: run the app; user errors, I/O and memory failures become one line and exit 2.

    This is the one place failures are turned into what the user reads: a
    :class:`UserError` as it is, an ``OSError`` (disk full, read-only, a folder
    in the way) or an out-of-memory error as the file, the cause, and what was
    kept and how to continue (:func:`archscale.io.errors.describe_failure`).
    """
    from archscale.cli.renames import apply_renames
    from archscale.io.errors import describe_failure
    from archscale.io.outputs import created_folders

    _register_commands()
    created_folders.clear()
    args = apply_renames(sys.argv[1:], lambda line: typer.echo(line, err=True))
    try:
        # without standalone mode, a command's typer.Exit(code) comes back as the return value
        code = app(args=args, prog_name="archscale", standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # Typer's (vendored click) usage errors: one line too, with where to look (exit code 2).
        if type(exc).__name__ == "NoArgsIsHelpError":  # `archscale` or `archscale data` alone: the help
            exc.show()
            sys.exit(exc.exit_code)
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            typer.echo(f"error: {_usage_error(exc)}", err=True)
            sys.exit(exc.exit_code)
        failure = describe_failure(exc)
        if failure is None:
            raise
        typer.echo(f"error: {failure}", err=True)
        sys.exit(2)
    flags_by_folder: dict[Path, list[str]] = {}  # `--out out/a.json --plot out/a.png`: one note for out/
    for flag, folder in created_folders:
        flags_by_folder.setdefault(folder, []).append(flag)
    for folder, flags in flags_by_folder.items():
        if folder.is_dir():
            typer.echo(f"note: created folder {folder} for {' and '.join(flags)}", err=True)
    sys.exit(code if isinstance(code, int) else 0)
