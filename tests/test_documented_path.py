"""Every example command in README.md and in every verb's ``--help`` runs as written (issue 11, the documented path).

Where the commands come from:

* README.md: every line starting with ``archscale `` in a fenced ```bash block (a trailing ``\\`` joins the
  next line). Each block runs top to bottom in a folder of its own, so a block must not lean on another.
* ``--help``: each verb's examples (its epilog, written with :func:`archscale.cli.examples`), in order, in a
  folder of their own per verb. The rendered ``--help`` must show each one.

Each folder looks like the repository root to the commands (``data/``, ``experiments/``, ``docs/``,
``README.md`` are links to this checkout, read only) and outputs go to ``out/``, as the README promises
(git ignores ``/out/``). A command ending in ``# needs: WHAT`` (a GPU, vLLM, a Slurm cluster) is skipped with
that reason. bash expands each line (quotes, globs) exactly as a user's shell would; the CLI then runs
in-process (conftest's ``cli``), which saves the interpreter start of every command. One test per command, so
a failure names the file, line and command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from conftest import REPO

LINKED = ("data", "experiments", "docs", "README.md", "scripts")
NEEDS = re.compile(r"#\s*needs:\s*(.+)$")


@dataclass(frozen=True)
class Example:
    """One documented command: where it is written, the group (folder) it runs in, the text as written."""

    source: str
    group: str
    command: str

    @property
    def needs(self) -> str | None:
        found = NEEDS.search(self.command)
        return found.group(1).strip() if found else None

    @property
    def id(self) -> str:
        return f"{self.source} {' '.join(self.command.split()[:3])}"


def readme_examples(path: Path = REPO / "README.md") -> list[Example]:
    """The ``archscale`` lines of README.md's ```bash blocks, one group per block."""
    examples: list[Example] = []
    block_start, pending, pending_line = None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if block_start is None:
            if stripped == "```bash":
                block_start = number
            continue
        if stripped.startswith("```"):
            block_start = None
            continue
        if pending:
            pending += " " + stripped
        elif stripped.startswith(("archscale ", "torchrun ")):
            pending, pending_line = stripped, number
        if pending and not pending.endswith("\\"):
            examples.append(Example(f"README.md:{pending_line}", f"README.md:{block_start}", pending))
            pending = ""
        elif pending:
            pending = pending[:-1].rstrip()
    return examples


def _verbs() -> dict[str, object]:
    """Every verb's click command by its full name (``bench calibrate``, ``data prepare``)."""
    from archscale.cli import _register_commands, app

    _register_commands()
    verbs = {}
    for name, command in typer.main.get_command(app).commands.items():
        for sub_name, sub in getattr(command, "commands", {}).items():
            verbs[f"{name} {sub_name}"] = sub
        if not hasattr(command, "commands"):
            verbs[name] = command
    return verbs


def help_examples() -> list[Example]:
    """Each verb's examples, as its epilog lists them."""
    examples = []
    for name, command in _verbs().items():
        for line in (command.epilog or "").splitlines():
            if line.strip().startswith(("archscale ", "torchrun ")):
                examples.append(Example(f"archscale {name} --help", f"help:{name}", line.strip()))
    return examples


README_EXAMPLES = readme_examples()
HELP_EXAMPLES = help_examples()


# ---- running -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One scratch repository root per group, made on its first command; a group's failure skips the rest of it."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    made: dict[str, Path] = {}
    failed: dict[str, str] = {}

    def folder(group: str) -> Path:
        if group in failed:
            pytest.skip(f"an earlier command of {group} failed: {failed[group]}")
        if group not in made:
            root = tmp_path_factory.mktemp(re.sub(r"\W+", "-", group))
            for name in LINKED:
                (root / name).symlink_to(REPO / name)
            made[group] = root
        return made[group]

    folder.cache = cache
    folder.failed = failed
    return folder


def argv(command: str, cwd: Path) -> list[str]:
    """The arguments bash gives ``archscale`` for this line (quotes removed, globs expanded in ``cwd``)."""
    rest = command.split(" ", 1)[1]
    done = subprocess.run(["bash", "-c", f"set -- {rest}\nprintf '%s\\0' \"$@\""], cwd=cwd, capture_output=True,
                          text=True, check=True)
    return done.stdout.split("\0")[:-1]


def run_example(example: Example, folders, cli, monkeypatch) -> None:
    if example.needs:
        pytest.skip(f"needs {example.needs}: {example.command}")
    assert example.command.startswith("archscale "), f"{example.source}: only archscale lines run here: {example.command}"
    root = folders(example.group)
    monkeypatch.chdir(root)
    monkeypatch.setenv("ARCHSCALE_CACHE", str(folders.cache))
    monkeypatch.setenv("COLUMNS", "200")
    result = cli(*argv(example.command, root))
    if result.code != 0:
        folders.failed[example.group] = example.command
    assert result.code == 0, f"{example.source}: `{example.command}` exited {result.code}:\n{result.err[-2000:]}"
    assert "Traceback" not in result.err
    assert not [p.name for p in root.iterdir() if p.name not in (*LINKED, "out")], \
        f"{example.source}: `{example.command}` wrote outside out/"


@pytest.mark.parametrize("example", README_EXAMPLES, ids=[e.id for e in README_EXAMPLES])
def test_readme_example_runs(example, folders, cli, monkeypatch):
    run_example(example, folders, cli, monkeypatch)


@pytest.mark.parametrize("example", HELP_EXAMPLES, ids=[e.id for e in HELP_EXAMPLES])
def test_help_example_runs(example, folders, cli, monkeypatch):
    run_example(example, folders, cli, monkeypatch)


# ---- what is documented -------------------------------------------------------------------
def test_every_verb_has_examples_its_help_shows(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    by_verb: dict[str, list[str]] = {}
    for example in HELP_EXAMPLES:
        by_verb.setdefault(example.group.removeprefix("help:"), []).append(example.command)
    assert set(by_verb) == set(_verbs()), "verbs without examples: " + ", ".join(set(_verbs()) - set(by_verb))
    for verb, commands in by_verb.items():
        shown = cli(*verb.split(), "--help")
        assert shown.code == 0
        flat = " ".join(shown.out.split())
        for command in commands:
            assert " ".join(command.split()) in flat, f"`archscale {verb} --help` does not show: {command}"


def test_readme_examples_write_only_under_out():
    """Outputs named in README commands go to out/ (git-ignored), never into the repository."""
    flags = ("--out", "--plot", "--emit", "--export", "--runs", "--store")
    inputs = {"--store": ("data/",), "--runs": ()}
    for example in README_EXAMPLES:
        words = example.command.split("#")[0].split()
        for flag, value in zip(words, words[1:]):
            if flag in flags and not value.startswith(inputs.get(flag, ())):
                assert value.startswith("out/"), f"{example.source}: {flag} {value} is not under out/"
    assert "/out/" in (REPO / ".gitignore").read_text().split()


def test_readme_tour_shows_what_the_tour_script_printed():
    """Each line of the README's tour is in the outputs experiments/readme/readme_tour.sh wrote (it takes minutes to
    rerun, so this checks the README against the committed outputs; rerun the script to refresh both)."""
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "readme" / "check_readme_tour.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert " 0 mismatches" in done.stdout
