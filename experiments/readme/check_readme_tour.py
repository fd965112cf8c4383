"""Does every transcript in README.md show what the script that made it printed? The tour's come from
``bash experiments/readme/readme_tour.sh``, the fit and plan sections' from ``bash experiments/readme/readme_fit_plan.sh``,
"Picks you can defend" from ``bash experiments/readme/readme_search.sh``.

Run:  python experiments/readme/check_readme_tour.py     (after those scripts; exits 1 on a mismatch)

Every ```text block of the README is a trimmed transcript: a ``$ COMMAND`` line must be the first line of one of
the scripts' ``NN-*.txt`` files (the command exactly as the script ran it), and each line under it must be a line
of that file's output (a line ending in ``...`` is a line that starts so). A block whose first command ends in
``# needs: ...`` (the Slurm session) was not made by a script and is left out. Measured speeds change from run to
run: the torch benchmark's tokens/s cells (and its status, ``noisy`` when the repeats disagree on a busy machine)
and training's tokens/s and warm-up time. Where a line matches only with
those masked, it is reported as "measured, differs" and is not a mismatch; everything else on the line (losses,
steps, shapes) must match. Prints one line per README line checked that is not verbatim, and a summary.
tests/test_documented_path.py reruns the same commands and checks their fresh output with :func:`shown_in`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
TOUR = RESULTS / "tour"  # experiments/readme/readme_tour.sh
SEARCH = RESULTS / "search"  # experiments/readme/readme_search.sh
PLAN = RESULTS / "plan"  # experiments/readme/readme_fit_plan.sh
TRAIN_SPEED = re.compile(r"[\d,.]+ tokens/s \(after \d+ warm-up steps, [\d.]+ s\)")
NEEDS = re.compile(r"#\s*needs:\s*(.+)$")


def mask_measured(command: str, line: str) -> str:
    """``line`` of what ``command`` printed, with the figures it measured (speeds, times) replaced by ``#``."""
    if command.startswith("$ archscale train "):
        return TRAIN_SPEED.sub("# tokens/s (warm-up #)", line)
    if command.startswith("$ archscale bench ") and "--backend torch" in command and line.startswith(("│", "┃")):
        cells = [cell.strip() for cell in line.split(line[0])]  # column widths follow the measured figures
        if line[0] == "│" and len(cells) > 10:  # total tok/s (with its std) and out tok/s; noisy repeats make `noisy`
            cells[7], cells[8] = "#", "#"  # (a noisy status says why, wrapped over more lines: its first line counts)
            cells[10] = "#" if cells[10] == "ok" or cells[10].startswith("noisy") else cells[10]
        return line[0].join(cells)
    return line


def readme_blocks(readme: str) -> list[list[str]]:
    """The README's ```text blocks that are a script's transcripts (lines, ``\\`` continuations joined)."""
    blocks = []
    for block in readme.split("```text")[1:]:
        lines = joined(block.split("```", 1)[0].splitlines()[1:])
        commands = [line for line in lines if line.startswith("$ ")]
        if commands and not NEEDS.search(commands[0]):
            blocks.append(lines)
    return blocks


def shown_in(command: str, shown: list[str], output: list[str]) -> tuple[list[str], list[str]]:
    """Which README lines ``shown`` under ``command`` are not in ``output``: (measured figures that differ, mismatches)."""
    measured, problems = [], []
    masked = [mask_measured(command, candidate) for candidate in output]
    for line in shown:
        if matches(line, output):
            continue
        if mask_measured(command, line) != line and matches(mask_measured(command, line), masked):
            measured.append(line)
        else:
            problems.append(line)
    return measured, problems


def transcripts() -> dict[str, tuple[str, list[str]]]:
    """Each script's transcript by its command line: (file stem, output lines)."""
    found = {}
    for path in [*sorted(TOUR.glob("[0-9][0-9]-*.txt")), *sorted(SEARCH.glob("*.txt")),
                 *sorted(PLAN.glob("[0-9][0-9]-*.txt"))]:
        lines = path.read_text().splitlines()
        found[" ".join(lines[0].split())] = (path.stem, lines[1:])
    return found


def joined(lines: list[str]) -> list[str]:
    """README lines with shell continuations (``\\`` at the end) joined into one."""
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def matches(line: str, output: list[str]) -> bool:
    if line.endswith("..."):
        return any(candidate.startswith(line[:-3].rstrip()) for candidate in output)
    return line in output


def transcript_steps(block: list[str]) -> list[tuple[str, list[str]]]:
    """A README transcript as (``$ COMMAND`` line, the lines shown under it); lines before any command get ``""``."""
    steps: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            steps.append((" ".join(line.split()), []))
        elif steps:
            steps[-1][1].append(line)
        else:
            steps.append(("", [line]))
    return steps


def main() -> int:
    known = transcripts()
    problems, measured, checked, missed = [], [], 0, 0
    for block in readme_blocks((ROOT / "README.md").read_text()):
        for command, shown in transcript_steps(block):
            if not command:
                problems += [f"output without a command: {line}" for line in shown]
            elif command not in known:
                problems.append(f"no script's transcript ran: {command}")
            else:
                stem, output = known[command]
                checked += len(shown)
                differ, missing = shown_in(command, shown, output)
                measured += [f"{stem}: measured, differs: {line}" for line in differ]
                problems += [f"{stem}: not in its output: {line}" for line in missing]
                missed += len(missing)
    for message in measured + problems:
        print(message)
    print(f"{checked} README transcript lines checked: {checked - missed - len(measured)} verbatim, "
          f"{len(measured)} measured figures that differ, {len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
