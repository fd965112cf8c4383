"""Does README.md's tour show what ``bash experiments/readme/readme_tour.sh`` printed (and its "Picks you can defend"
block what ``bash experiments/readme/readme_search.sh`` printed)?

Run:  python experiments/readme/check_readme_tour.py     (after the tour script; exits 1 on a mismatch)

Every ```text block of the README's tour section is a trimmed transcript: a ``$ COMMAND`` line must be the
first line of one of ``experiments/results/tour/NN-*.txt`` (the command exactly as the script ran it), and each
line under it must be a line of that file's output (a line ending in ``...`` is a line that starts so). Measured
speeds change from run to run: the torch benchmark's tokens/s cells (``05-bench-torch``) and training's tokens/s
and warm-up time (``06-train``). Where a line matches only with those masked, it is reported as "measured,
differs" and is not a mismatch; everything else on the line (losses, steps, shapes) must match. Prints one line per README line checked that is not
verbatim, and a summary.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOUR = ROOT / "experiments" / "results" / "tour"
SEARCH = ROOT / "experiments" / "results" / "search"  # experiments/readme/readme_search.sh
TRAIN_SPEED = re.compile(r"[\d,.]+ tokens/s \(after \d+ warm-up steps, [\d.]+ s\)")


def mask_measured(stem: str, line: str) -> str:
    """``line`` with the figures that are measured in step ``stem`` replaced by ``#``."""
    if stem == "06-train":
        return TRAIN_SPEED.sub("# tokens/s (warm-up #)", line)
    if stem == "05-bench-torch" and line.startswith("│"):
        cells = line.split("│")
        if len(cells) > 9:  # total tok/s (with its std) and out tok/s
            cells[7], cells[8] = "#", "#"
        return "│".join(cells)
    return line


def tour_blocks(readme: str) -> list[list[str]]:
    """The ```text blocks of the tour (up to the next ``## `` heading) and of "Picks you can defend"."""
    blocks = []
    for heading in ("\n## A tour", "\n### Picks you can defend"):
        section = readme.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        blocks += [block.split("```", 1)[0].splitlines()[1:] for block in section.split("```text")[1:]]
    return blocks


def transcripts() -> dict[str, tuple[str, list[str]]]:
    """Each tour file by its command line: (file stem, output lines)."""
    found = {}
    for path in [*sorted(TOUR.glob("[0-9][0-9]-*.txt")), *sorted(SEARCH.glob("*.txt"))]:
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


def main() -> int:
    known = transcripts()
    problems, measured, checked = [], [], 0
    for block in tour_blocks((ROOT / "README.md").read_text()):
        stem, output = None, []
        for line in joined(block):
            if line.startswith("$ "):
                command = " ".join(line.split())
                if command not in known:
                    problems.append(f"no tour file ran: {line}")
                    stem, output = None, []
                    continue
                stem, output = known[command]
                continue
            checked += 1
            if stem is None:
                problems.append(f"output without a command: {line}")
            elif not matches(line, output):
                masked = [mask_measured(stem, candidate) for candidate in output]
                if mask_measured(stem, line) != line and matches(mask_measured(stem, line), masked):
                    measured.append(f"{stem}: measured, differs: {line}")
                else:
                    problems.append(f"{stem}: not in its output: {line}")
    for message in measured + problems:
        print(message)
    print(f"{checked} README tour lines checked: {checked - len(problems) - len(measured)} verbatim, "
          f"{len(measured)} measured figures that differ, {len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
