"""The tree shows the pipeline: one package per stage, imports only point down, no import circles.

The rule is written once, in ``docs/architecture.md`` (the table under "Which package may import which"),
and read from there: a new import that breaks it, or a circle between modules, fails here with the
importing file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "archscale"
DOC = ROOT / "docs" / "architecture.md"
TOP_LEVEL_ALLOWED = {"__init__.py", "__main__.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every archscale module this file imports, anywhere in it (a function-level import counts too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base == "archscale" or base.startswith("archscale."):
                for alias in node.names:  # ``from archscale.x import y`` may name the submodule y
                    candidate = f"{base}.{alias.name}"
                    found.append((candidate if _is_module(candidate) else base, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "archscale"]
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def stage_of(module: str) -> str:
    """``archscale.fit.study`` -> ``fit``; the package's own ``__init__`` (``__version__``) -> ``archscale``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "archscale"


def documented_rule() -> dict[str, set[str]]:
    """The table in docs/architecture.md: | `stage` | what it may import (comma-separated, `-` for none) |."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Which package may import which", 1)[1].split("\n## ", 1)[0]
    rule: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|\s*([^|]*)\|", line)
        if match:
            allowed = {s.strip(" `") for s in match.group(2).split(",") if s.strip(" `-")}
            rule[match.group(1)] = allowed
    return rule


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_sits_at_the_top_of_the_package():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL_ALLOWED)
    assert not loose, f"modules at the top of archscale/ (move each into its stage's package): {loose}"


def test_every_stage_package_says_what_comes_in_and_what_goes_out():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert re.search(r"^In:\s", doc, re.M) and re.search(r"\bOut:\s", doc), \
            f"{init.relative_to(ROOT)}: its docstring must say what comes in ('In: ...') and what goes out ('Out: ...')"


def test_the_documented_rule_names_every_package():
    rule = documented_rule()
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert set(rule) == packages, f"docs/architecture.md rule table vs packages: {sorted(set(rule) ^ packages)}"


def test_imports_follow_the_documented_rule():
    rule = documented_rule()
    broken = []
    for path in source_files():
        stage = stage_of(module_name(path))
        if stage == "archscale" or path.name == "__main__.py":
            continue  # the version module, and entry files, which hand their arguments to the CLI
        for target, line in imports_of(path):
            other = stage_of(target)
            if other not in (stage, "archscale") and other not in rule[stage]:
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({stage} may import "
                              f"{', '.join(sorted(rule[stage])) or 'nothing'})")
    assert not broken, "imports against docs/architecture.md:\n" + "\n".join(broken)


def test_the_rule_itself_has_no_circle():
    rule = documented_rule()
    assert not _cycles({k: v & set(rule) for k, v in rule.items()})


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in source_files():
        name = module_name(path)
        graph[name] = {t for t, _ in imports_of(path) if t != name and t != "archscale"}
    circles = _cycles(graph)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each a circle to break."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("graph, circle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c"]),
    ({"a": {"b"}, "b": set()}, None),
])
def test_the_circle_finder_finds_circles(graph, circle):
    assert _cycles(graph) == ([circle] if circle else [])
