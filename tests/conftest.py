"""Shared fixtures: the CLI run in-process, the embedded corpus in a private cache, one torch thread, bench configs.

Plain helper functions (checks, config writers) live in ``helpers.py``; fixtures live here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TINY_128, TINY_160, write_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call ``cli("fit", "file.csv", ...)``; returns exit code, stdout and stderr."""
    from archscale.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["archscale", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory) -> Path:
    """A private cache folder with the embedded corpus prepared in it, once per test module.

    Private, because tests must never read or write the user's real cache (``~/.cache/archscale``).
    Module-scoped, because preparing the corpus costs seconds and a module's training tests all read
    the same bytes: once per module keeps the suite fast while each module still starts clean.
    ``ARCHSCALE_CACHE`` points here only while preparing; a test that trains sets it for itself,
    or asks for ``corpus_data``, which keeps it set.
    """
    from archscale.train.data import default_data_dir

    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARCHSCALE_CACHE", str(path))
        default_data_dir()
    return path


@pytest.fixture(scope="module")
def corpus_data(corpus_cache) -> Iterator[Path]:
    """The prepared data directory inside ``corpus_cache`` (what ``--data`` and ``train(cfg, data)`` take).

    ``ARCHSCALE_CACHE`` stays pointed at ``corpus_cache`` until the module ends, so whatever finds the
    corpus by itself (``train`` without ``--data``, CLI subprocesses inheriting the environment) uses
    the same private copy.
    """
    from archscale.train.data import default_data_dir

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
        yield default_data_dir()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one torch thread (OpenMP waiting on a busy core is 10x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_dirs(tmp_path) -> tuple[Path, Path]:
    """Two HF config folders for the bench tests: ``tiny128`` and ``tiny160`` (head_dim is not d_model / heads)."""
    return write_config(tmp_path / "tiny128", TINY_128), write_config(tmp_path / "tiny160", TINY_160)
