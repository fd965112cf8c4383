"""The ``archscale`` command line: a thin Typer layer over the library.

Each verb group lives in its own module under ``archscale.cli`` and registers
its commands on :data:`app`; none holds logic beyond parsing flags, calling
the library and printing. :func:`main` is the console-script entry point: it
turns :class:`~archscale.errors.UserError` into one line on stderr and exit 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from archscale import __version__
from archscale.errors import UserError

app = typer.Typer(
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


def print_json(payload: Any) -> None:
    """Write a JSON document to stdout (for ``--json``)."""
    from archscale.files import jsonable

    sys.stdout.write(json.dumps(jsonable(payload), indent=2) + "\n")


def _register_commands() -> None:
    """Import every verb module so its commands attach to :data:`app`."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{module.name}")


def main() -> None:
    """Console-script entry point: run the app; user errors, I/O and memory failures become one line and exit 2.

    This is the one place failures are turned into what the user reads: a
    :class:`UserError` as it is, an ``OSError`` (disk full, read-only, a folder
    in the way) or an out-of-memory error as the file, the cause, and what was
    kept and how to continue (:func:`archscale.errors.describe_failure`).
    """
    from archscale.errors import describe_failure
    from archscale.outputs import created_folders

    _register_commands()
    created_folders.clear()
    try:
        # without standalone mode, a command's typer.Exit(code) comes back as the return value
        code = app(standalone_mode=False)
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
        # Typer's (vendored click) usage errors know how to print themselves and their exit code (2).
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        failure = describe_failure(exc)
        if failure is None:
            raise
        typer.echo(f"error: {failure}", err=True)
        sys.exit(2)
    for flag, folder in created_folders:
        if folder.is_dir():
            typer.echo(f"note: created folder {folder} for {flag}", err=True)
    sys.exit(code if isinstance(code, int) else 0)
