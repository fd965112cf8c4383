"""Plain helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

from archscale.shapes.architecture import Architecture
from archscale.shapes.hf_config import write_hf_config

# The bench tests' two tiny shapes.
TINY_128 = Architecture(2, 128, 4, 2, 32, 256, vocab_size=512)
TINY_160 = Architecture(2, 160, 6, 2, 32, 256, vocab_size=512)  # 160 % 6 != 0: head_dim is not d_model / heads


def write_config(directory: Path, arch: Architecture) -> Path:
    """``directory/config.json``: ``arch`` as a Hugging Face config, as bench and search read one."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(write_hf_config(arch)))
    return directory


def one_line_error(result) -> bool:
    """Exit 2 with a single line on stderr and no traceback: how every refusal looks to a user."""
    return result.code == 2 and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def assert_one_line_error(result, store: Path, fragment: str) -> None:
    """A one-line ``error:`` naming ``fragment``, exit 2, no traceback, and the bench store was not created."""
    assert result.code == 2, (result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.err
    assert "Traceback" not in result.err
    assert not store.exists()


def assert_plausible_latencies(rows) -> None:
    """Measured bench rows carry TTFT and TPOT (and ITL where timed) with p50 <= p90 <= p99, all positive, and no
    longer than a repeat could have lasted: at most the slowest repeat's seconds, which the row bounds (a repeat's
    tokens/s is at most ``std * (repeats - 1) / sqrt(repeats)`` below the mean of the repeats')."""
    import math

    assert len(rows)
    for _, row in rows.iterrows():
        for metric in ("ttft", "tpot", "itl"):
            values = [row[f"{metric}_ms_{statistic}"] for statistic in ("p50", "p90", "p99")]
            if metric == "itl" and math.isnan(values[0]):
                continue  # a backend that cannot time each step leaves ITL percentiles out
            assert 0 < values[0] <= values[1] <= values[2] and row[f"{metric}_ms_mean"] > 0, (metric, values)
        slowest_rate = row["tokens_per_s"] - row["tokens_per_s_std"] * (row["repeats"] - 1) / math.sqrt(row["repeats"])
        repeat_tokens = row["batch_size"] * row["input_len"] + row["output_tokens"]
        longest_repeat_ms = 1e3 * repeat_tokens / slowest_rate if slowest_rate > 0 else math.inf
        assert row["ttft_ms_p99"] < longest_repeat_ms
        assert row["tpot_ms_p99"] * (row["output_len"] - 1) < longest_repeat_ms


def validation_script(name: str) -> Iterator[ModuleType]:
    """A script of experiments/validate as a module, with its folder on the path while it is used (the scripts
    import their siblings); for a module-scoped fixture to ``yield from``."""
    folder = str(Path(__file__).resolve().parents[1] / "experiments" / "validate")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def assert_figures_as_recorded(got, expected, tolerance: float = 0.005, rank_tolerance: float = 0.01) -> None:
    """A validation's figures as its recorded output (validation.txt) gives them: the same terms chosen, each error
    within ``tolerance`` (half a point) and each rank correlation (a name with ``spearman``) within ``rank_tolerance``."""
    assert got["terms"] == expected["terms"]
    for name, value in expected.items():
        if name != "terms":
            allowed = rank_tolerance if "spearman" in name else tolerance
            assert got[name] == pytest.approx(value, abs=allowed), name
