"""Every example command in README.md and in every verb's ``--help`` runs as written (issue 11, the documented path),
and leaves the repository as ``git status`` found it.

Where the commands come from:

* README.md's ```bash blocks: every line starting with ``archscale `` (a trailing ``\\`` joins the next line). Each
  block runs top to bottom in a folder of its own, so a block must not lean on another.
* README.md's ```text blocks, the transcripts: every ``$ COMMAND`` line, with the lines the README shows under it.
  The transcripts of one ``## `` section run in order in one folder (the tour's steps build on each other), and
  each line shown must be in what the command prints now, by the rule ``experiments/readme/check_readme_tour.py``
  holds the committed transcripts to (a line ending in ``...`` is a prefix; measured speeds may differ). A command
  ending in ``# needs: WHAT`` is skipped with that reason, and so is the rest of its block, which continues it.
* ``--help``: each verb's examples (its epilog, written with :func:`archscale.cli.examples`), in order, in a
  folder of their own per verb; and all of them in the order ``archscale --help`` lists the verbs, in one folder,
  as a user trying one verb after another does. The rendered ``--help`` must show each example as one command:
  what a shell reads from the copied lines is the example's own arguments.

Each folder is a copy of this checkout (its tracked files and the new files git does not ignore) committed to a
scratch git repository. After every command, ``git status --ignored`` there may show nothing but ``out/``: the
README's promise that every command writes under ``out/``, which git ignores, checked exactly (an overwritten
committed figure, a stray file at the root, an ignored folder elsewhere all show). bash expands each line (quotes,
globs) exactly as a user's shell would; the CLI then runs in-process (conftest's ``cli``), which saves the
interpreter start of every command. One test per command, so a failure names the file, line and command.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from conftest import REPO

NEEDS = re.compile(r"#\s*needs:\s*(.+)$")
COLUMNS = "160"  # the width the README scripts ran at (experiments/readme/*.sh)


def _load_checker():
    """experiments/readme/check_readme_tour.py: one rule for a README transcript line, here and in the check."""
    spec = importlib.util.spec_from_file_location("check_readme_tour", REPO / "experiments" / "readme" / "check_readme_tour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = _load_checker()


@dataclass(frozen=True)
class Example:
    """One documented command: where it is written, the group (folder) it runs in, the text as written, and for a
    transcript the lines shown under it and a need that an earlier command of its block declared."""

    source: str
    group: str
    command: str
    shown: tuple[str, ...] = ()
    block_needs: str | None = None

    @property
    def needs(self) -> str | None:
        found = NEEDS.search(self.command)
        return found.group(1).strip() if found else self.block_needs

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


def readme_transcripts(path: Path = REPO / "README.md") -> list[Example]:
    """The ``$ COMMAND`` lines of README.md's ```text blocks with the lines shown under each; one group per section."""
    examples: list[Example] = []
    section, block = "README.md:1", None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if block is None:
            if line.startswith("## "):
                section = f"README.md:{number}"
            elif line.strip() == "```text":
                block = []
            continue
        if line.strip().startswith("```"):
            examples += _transcript_examples(block, section)
            block = None
        else:
            block.append((number, line))
    return examples


def _transcript_examples(block: list[tuple[int, str]], group: str) -> list[Example]:
    """One block's commands (``\\`` continuations joined); a command with a need passes it to the rest of the block."""
    steps: list[tuple[int, str, list[str]]] = []
    for number, line in block:
        if steps and steps[-1][1].endswith("\\"):
            steps[-1] = (steps[-1][0], steps[-1][1][:-1].rstrip() + " " + line.strip(), steps[-1][2])
        elif line.startswith("$ "):
            steps.append((number, line[2:].strip(), []))
        elif steps:
            steps[-1][2].append(line)
    examples, needs = [], None
    for number, command, shown in steps:
        example = Example(f"README.md:{number}", group, command, tuple(shown), needs)
        needs = example.needs
        examples.append(example)
    return examples


def verbs_in_help_order() -> dict[str, object]:
    """Every verb's click command by its full name (``bench calibrate``, ``data prepare``), in ``archscale --help``'s order."""
    from archscale.cli import _register_commands, app

    _register_commands()
    group = typer.main.get_command(app)
    verbs = {}
    for name in group.list_commands(None):  # the order --help lists them in
        command = group.commands[name]
        for sub_name, sub in getattr(command, "commands", {}).items():
            verbs[f"{name} {sub_name}"] = sub
        if not hasattr(command, "commands"):
            verbs[name] = command
    return verbs


def help_examples() -> list[Example]:
    """Each verb's examples, as its epilog lists them, verbs in ``--help`` order."""
    examples = []
    for name, command in verbs_in_help_order().items():
        for line in (command.epilog or "").splitlines():
            if line.strip().startswith(("archscale ", "torchrun ")):
                examples.append(Example(f"archscale {name} --help", f"help:{name}", line.strip()))
    return examples


README_EXAMPLES = readme_examples()
README_TRANSCRIPTS = readme_transcripts()
HELP_EXAMPLES = help_examples()


# ---- running -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """This checkout as a clone with the working tree's changes would hold it, committed to a scratch git repository."""
    root = tmp_path_factory.mktemp("checkout") / "repo"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode()
    for name in sorted(set(listed.split("\0")) - {""}):
        source, target = REPO / name, root / name
        if source.is_file():  # a tracked file deleted in the working tree is left out, as a clone of it would be
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    git = ["git", "-c", "user.name=archscale tests", "-c", "user.email=tests@archscale.invalid", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the checkout under test"]):
        subprocess.run([*git, *args], cwd=root, capture_output=True, check=True)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory, checkout):
    """One copy of the checkout per group, made on its first command; a group's failure skips the rest of it."""
    cache = tmp_path_factory.mktemp("corpus-cache")
    made: dict[str, Path] = {}
    failed: dict[str, str] = {}

    def folder(group: str) -> Path:
        if group in failed:
            pytest.skip(f"an earlier command of {group} failed: {failed[group]}")
        if group not in made:
            made[group] = shutil.copytree(checkout, tmp_path_factory.mktemp(re.sub(r"\W+", "-", group)) / "repo",
                                          symlinks=True)
        return made[group]

    folder.cache = cache
    folder.failed = failed
    return folder


def argv(command: str, cwd: Path) -> list[str]:
    """The arguments bash gives ``archscale`` for this line (quotes removed, globs expanded in ``cwd``)."""
    rest = command.split(None, 1)[1]
    done = subprocess.run(["bash", "-c", f"set -- {rest}\nprintf '%s\\0' \"$@\""], cwd=cwd, capture_output=True,
                          text=True, check=True)
    return done.stdout.split("\0")[:-1]


def outside_out(root: Path) -> list[str]:
    """What ``git status`` shows in a copy of the checkout beyond ``out/``: a file changed, made or ignored elsewhere."""
    status = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    return [line for line in status.splitlines() if not line[3:].strip('"').startswith("out/")]


def run_example(example: Example, folders, cli, monkeypatch) -> list[str]:
    """Run one documented command in its group's folder; return the lines it printed (stdout and stderr)."""
    if example.needs:
        pytest.skip(f"needs {example.needs}: {example.command}")
    root = folders(example.group)
    monkeypatch.chdir(root)
    monkeypatch.setenv("ARCHSCALE_CACHE", str(folders.cache))
    monkeypatch.setenv("COLUMNS", COLUMNS)
    if example.command.startswith("archscale "):
        result = cli(*argv(example.command, root))
        code, out, err = result.code, result.out, result.err
    else:  # a transcript's shell step (the tour's `cp`)
        done = subprocess.run(["bash", "-c", example.command], cwd=root, capture_output=True, text=True)
        code, out, err = done.returncode, done.stdout, done.stderr
    if code != 0:
        folders.failed[example.group] = example.command
    assert code == 0, f"{example.source}: `{example.command}` exited {code}:\n{err[-2000:]}"
    assert "Traceback" not in err
    assert not outside_out(root), f"{example.source}: `{example.command}` wrote outside out/: {outside_out(root)}"
    return (out + err).splitlines()


@pytest.mark.parametrize("example", README_EXAMPLES, ids=[e.id for e in README_EXAMPLES])
def test_readme_example_runs(example, folders, cli, monkeypatch):
    run_example(example, folders, cli, monkeypatch)


@pytest.mark.parametrize("example", README_TRANSCRIPTS, ids=[e.id for e in README_TRANSCRIPTS])
def test_readme_transcript_runs_and_prints_what_it_shows(example, folders, cli, monkeypatch):
    """A transcript's command runs as shown, and prints every line the README shows under it (speeds aside)."""
    output = run_example(example, folders, cli, monkeypatch)
    measured, missing = CHECK.shown_in(f"$ {example.command}", list(example.shown), output)
    assert not missing, (f"{example.source}: `{example.command}` no longer prints these README lines (rerun the script "
                         "in experiments/readme/ that made them, then update the README):\n" + "\n".join(missing)
                         + "\nit printed:\n" + "\n".join(output[-60:]))


@pytest.mark.parametrize("example", HELP_EXAMPLES, ids=[e.id for e in HELP_EXAMPLES])
def test_help_example_runs(example, folders, cli, monkeypatch):
    run_example(example, folders, cli, monkeypatch)


def test_help_examples_run_one_verb_after_another_in_one_folder(folders, cli, monkeypatch):
    """The examples of every verb in ``archscale --help`` order, in one folder: a verb's examples must not break on
    what an earlier verb's left there (train's run folder inside the emitted configs made sweep's and export's
    re-emission of those configs fail)."""
    for example in HELP_EXAMPLES:
        if not example.needs:
            run_example(Example(example.source, "help: every verb in order", example.command), folders, cli, monkeypatch)


# ---- what is documented -------------------------------------------------------------------
def rendered_examples(help_text: str) -> list[str]:
    """The examples as ``--help`` prints them: each the lines a user copies (a line ending in `` \\`` goes on)."""
    commands: list[str] = []
    for line in help_text.split("Examples (from the repository root", 1)[1].splitlines():
        stripped = line.strip()
        if commands and commands[-1].endswith("\\"):
            commands[-1] += "\n" + line
        elif stripped.startswith(("archscale ", "torchrun ")):
            commands.append(stripped)
    return commands


@pytest.mark.parametrize("width", [60, 120])
def test_every_verb_shows_each_example_as_one_command_to_copy(cli, monkeypatch, width):
    """Each verb has examples, and its ``--help`` shows each one so that the copied lines are that one command (help
    used to wrap an example at the terminal width like prose, so a copy ran as several broken commands)."""
    from archscale.cli import _example_chunks

    monkeypatch.setenv("COLUMNS", str(width))
    by_verb: dict[str, list[str]] = {}
    for example in HELP_EXAMPLES:
        by_verb.setdefault(example.group.removeprefix("help:"), []).append(example.command)
    assert set(by_verb) == set(verbs_in_help_order()), "verbs without examples: " + ", ".join(set(verbs_in_help_order()) - set(by_verb))
    for verb, commands in by_verb.items():
        shown = cli(*verb.split(), "--help")
        assert shown.code == 0
        copied = rendered_examples(shown.out)
        assert len(copied) == len(commands), f"`archscale {verb} --help` shows {len(copied)} examples of {len(commands)}"
        for command, text in zip(commands, copied):
            assert argv(text, REPO) == argv(command, REPO), f"`archscale {verb} --help` breaks up: {command}\nas:\n{text}"
            long = [line for line in text.splitlines()
                    if len(line) > width and len(_example_chunks(line.strip().removesuffix("\\"))) > 1]
            assert not long, f"`archscale {verb} --help`: lines wider than {width} that could break: {long}"


def test_readme_examples_write_only_under_out():
    """Outputs named in README commands (blocks and transcripts) and in help examples go to out/ (git-ignored)."""
    flags = ("--out", "--plot", "--emit", "--export", "--runs", "--store")
    inputs = {"--store": ("data/",), "--runs": ()}
    for example in README_EXAMPLES + README_TRANSCRIPTS + HELP_EXAMPLES:
        if example.needs:
            continue
        words = example.command.split("#")[0].split()
        for flag, value in zip(words, words[1:]):
            if flag in flags and not value.startswith(inputs.get(flag, ())):
                assert value.startswith("out/"), f"{example.source}: {flag} {value} is not under out/"
    assert "/out/" in (REPO / ".gitignore").read_text().split()


def test_readme_tour_shows_what_the_tour_script_printed():
    """Each line of the README's transcripts is in the outputs the scripts in experiments/readme/ wrote (the tour takes
    minutes to rerun, so this checks the README against the committed outputs; rerun the script to refresh both)."""
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "readme" / "check_readme_tour.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert " 0 mismatches" in done.stdout


def test_ci_installs_exactly_as_the_readme_says():
    """.ci/run runs the README's install command, and that command takes torch from the CPU wheel index (a plain
    ``pip install torch==2.13.0`` gets the package index's CUDA build on Linux)."""
    install = REPO.joinpath("README.md").read_text().split("## Install, run, test", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    pip_lines = [line.strip() for line in install.splitlines() if line.strip().startswith("pip install")]
    assert pip_lines, "the README's install block has no pip line"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for line in pip_lines:
        assert line in ci, f".ci/run does not run the README's install command: {line}"
    torch_line = next(line for line in pip_lines if "torch==" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line.split("&&")[0]
