"""One benchmark record: the columns every backend fills, and the helpers that build them.

A record is a flat dict (one row of the results store) per (config, backend,
hardware, workload, batch size). The torch, vLLM and roofline backends all emit
this same shape so their rows can be compared one for one, and so
:mod:`archscale.search.constrained` can read measured throughput with the shape columns it
matches on (``n_layers .. d_ff``) plus ``gpu``, the workload and ``tokens_per_s``.

``tokens_per_s`` is *total* tokens (prompt + generated) per second of the
batch, as vLLM's throughput benchmark reports it; ``output_tokens_per_s``
counts generated tokens only (both are always stored; tables label which is
which). For estimates (backend ``roofline``), ``profile`` names the
calibration profile behind the figure (``uncalibrated`` for none) and
``concurrency`` how many sequences the engine could run at once (fewer than
the batch when the KV cache is full: the batch runs in waves). ``threads`` is the number of CPU threads the
measuring process computed with (torch intra-op threads, or vLLM's CPU worker
threads); None where it does not apply (GPU runs, estimates). ``cpu_binding`` is the CPU
cores those threads were bound to (``0-3``; ranks of a multi-process engine
joined by ``|``), as vLLM's CPU backend pins its model workers.

``prefill_chunk_tokens`` and ``first_prompt_alone`` say how the engine scheduled the prompts, the two settings
``bench calibrate`` needs to model latency (:class:`~archscale.serving.estimate.EngineSettings`): the prompt tokens
per prefill pass, read off the engine's scheduler, and the share of timed repeats in which the engine started on the
first request alone, before the others were scheduled, from the engine's own timestamps (None for one request, or
where a backend does not say). On vLLM it is a race between the client handing over requests and the engine's
first pass: measured here on a CPU at 4 prompts of 320 tokens, one repeat of two started alone.

``ttft_ms_*``, ``tpot_ms_*`` and ``itl_ms_*`` (:data:`LATENCY_COLUMNS`) are per-request latencies in
milliseconds, with vLLM's benchmark definitions (:func:`latency_fields`); None where a backend did not measure
them. Each backend's docstring says how it times them.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from archscale.io.errors import one_line
from archscale.io.vocabulary import ENGINES, LATENCY_COLUMNS, LATENCY_METRICS, LATENCY_PERCENTILES, latency_column
from archscale.shapes.architecture import MOE_FIELDS, Architecture
from archscale.shapes.hf_config import write_hf_config

# ``ttft_ms_mean, ttft_ms_p50, ..., itl_ms_p99``: milliseconds, None where not measured (:func:`latency_fields`); one
# list for measured rows and the serving model's estimates, so they compare column for column.

# (column, SQLite type); the order is the order of tables and CSV exports.
COLUMN_TYPES: tuple[tuple[str, str], ...] = (
    ("config_hash", "TEXT"),
    ("name", "TEXT"),
    ("source", "TEXT"),
    ("n_layers", "INTEGER"),
    ("d_model", "INTEGER"),
    ("n_heads", "INTEGER"),
    ("n_kv_heads", "INTEGER"),
    ("d_head", "INTEGER"),
    ("d_ff", "INTEGER"),
    ("vocab", "INTEGER"),
    ("tie_embeddings", "INTEGER"),
    *((name, "INTEGER") for name in MOE_FIELDS),  # empty for a dense shape (Architecture.shape_columns)
    ("backend", "TEXT"),
    ("gpu", "TEXT"),
    ("device_name", "TEXT"),
    ("dtype", "TEXT"),
    ("tp", "INTEGER"),
    ("threads", "INTEGER"),
    ("cpu_binding", "TEXT"),
    ("batch_size", "INTEGER"),
    ("input_len", "INTEGER"),
    ("output_len", "INTEGER"),
    ("repeats", "INTEGER"),
    ("tokens_per_s", "REAL"),
    ("output_tokens_per_s", "REAL"),
    ("tokens_per_s_std", "REAL"),
    ("prefill_s", "REAL"),
    ("decode_s", "REAL"),
    *((name, "REAL") for name in LATENCY_COLUMNS),
    ("output_tokens", "INTEGER"),
    ("memory_gb", "REAL"),
    ("concurrency", "INTEGER"),
    ("prefill_chunk_tokens", "INTEGER"),
    ("first_prompt_alone", "REAL"),
    ("profile", "TEXT"),
    ("status", "TEXT"),
    ("error", "TEXT"),
    ("torch_version", "TEXT"),
    ("vllm_version", "TEXT"),
    ("archscale_version", "TEXT"),
    ("timestamp", "TEXT"),
)
COLUMNS: tuple[str, ...] = tuple(name for name, _ in COLUMN_TYPES)
SHAPE_COLUMNS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff")
MEASURED_BACKENDS = ENGINES
"""Engines whose rows are measurements: the serving engines profiles are for (sglang and hf rows come from published
tables; archscale runs torch and vLLM). One list, so a new engine is both measurable and calibratable."""
BACKENDS = ("torch", "vllm", "roofline")
"""What ``archscale bench --backend`` runs; ``roofline`` rows are estimates of the serving model."""
NOISY_CV = 0.2
"""A measurement whose repeats scatter more than this (std / mean of tokens/s) is stored as ``noisy``, not ``ok``.

Repeats on a quiet machine agree within a few percent (the tour's CPU rows: 2-5%);
a std of 85% of the mean says the machine was busy, and such a row must not
stand in for an estimate (search and calibration use ``ok`` rows only).
``archscale bench --max-noise`` sets another limit for one run.
"""

def config_hash(arch: Architecture) -> str:
    """First 12 hex of the sha256 of the canonical HF config of the shape (the bench store's ``config_hash``).

    A shape alone: a runs table's ``recipe_hash`` also covers the training recipe
    (:func:`archscale.train.config.recipe_hash`).

    Hashing :func:`~archscale.shapes.hf_config.write_hf_config` (sorted keys, no whitespace)
    rather than the file's bytes makes a preset and the ``config.json`` emitted
    for the same shape hash alike, whatever incidental keys the file carries.
    """
    text = json.dumps(write_hf_config(arch), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def shape_fields(arch: Architecture) -> dict[str, Any]:
    """The shape columns of a record."""
    return {"config_hash": config_hash(arch), "name": arch.name, **arch.shape_columns()}


_GPU_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"h200", "h200"),
    (r"h100.*(pcie|nvl)", "h100-pcie"),
    (r"h100", "h100-sxm"),
    (r"a100.*80\s*gb", "a100-80gb"),
    (r"a100.*40\s*gb", "a100-40gb"),
    (r"a100", "a100-80gb"),
    (r"l40s", "l40s"),
    (r"\bl4\b", "l4"),
)


def gpu_key_for_device(device_name: str) -> str:
    """Map a CUDA device name to an archscale GPU key; unknown devices keep their lowercased name.

    ``"NVIDIA H100 80GB HBM3"`` -> ``h100-sxm``, ``"NVIDIA H200"`` -> ``h200``,
    ``"NVIDIA A100-SXM4-40GB"`` -> ``a100-40gb``; ``"cpu"`` stays ``cpu``.
    The key is what search and calibration match bench rows on.
    """
    lowered = device_name.strip().lower()
    for pattern, key in _GPU_PATTERNS:
        if re.search(pattern, lowered):
            return key
    return lowered


def package_version(name: str) -> str | None:
    """Installed version of a distribution without importing it (None when absent)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def archscale_version() -> str:
    from archscale import __version__

    return __version__


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summarize_repeats(totals_s: list[float], tokens_per_repeat: list[int], output_per_repeat: list[int]) -> dict[str, float]:
    """Mean total and output tokens/s over repeats and the sample std of total tokens/s.

    Throughput is averaged per repeat (not total tokens over total time) so
    the std describes the same quantity as the mean.
    """
    rates = [tokens / seconds for tokens, seconds in zip(tokens_per_repeat, totals_s)]
    output_rates = [tokens / seconds for tokens, seconds in zip(output_per_repeat, totals_s)]
    mean = sum(rates) / len(rates)
    std = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)) if len(rates) > 1 else 0.0
    return {
        "tokens_per_s": mean,
        "output_tokens_per_s": sum(output_rates) / len(output_rates),
        "tokens_per_s_std": std,
    }


def latency_fields(ttft_s: Sequence[float] | None, tpot_s: Sequence[float] | None, itl_s: Sequence[float] | None,
                   itl_mean_s: float | None = None) -> dict[str, float | None]:
    """The :data:`LATENCY_COLUMNS` (milliseconds) from per-request TTFTs, per-request TPOTs and pooled ITL gaps (seconds).

    vLLM's benchmark definitions, so a measured row reads like ``vllm bench serve`` output:
    TTFT = a request's first output token time - its arrival; TPOT = (last token time - first token time) /
    (output tokens - 1) per request; ITL = the gaps between consecutive output tokens of a request, pooled over
    requests. Each metric gets its mean and its 50th, 90th and 99th percentiles (``np.percentile``, linear
    interpolation). A metric given as None or empty is None in every statistic: not measured is not zero.

    ``itl_mean_s`` is the ITL mean where the gaps themselves were not timed: a request's gaps sum to its
    decode span (last - first token time), so the pooled mean is exactly the summed spans over the summed
    gaps, known without per-token times; the ITL percentiles stay None. Given ``itl_s``, it is ignored.
    """
    import numpy as np

    fields: dict[str, float | None] = dict.fromkeys(LATENCY_COLUMNS)
    for metric, values in zip(LATENCY_METRICS, (ttft_s, tpot_s, itl_s)):
        if values is None or len(values) == 0:
            continue
        milliseconds = 1e3 * np.asarray(values, dtype=float)
        fields[latency_column(metric, "mean")] = float(milliseconds.mean())
        for statistic, value in zip(LATENCY_PERCENTILES, np.percentile(milliseconds, LATENCY_PERCENTILES)):
            fields[latency_column(metric, statistic)] = float(value)
    if fields["itl_ms_mean"] is None and itl_mean_s is not None:
        fields["itl_ms_mean"] = 1e3 * itl_mean_s
    return fields


def make_record(arch: Architecture, source: str, backend: str, workload: Mapping[str, int],
                measured: Mapping[str, Any], max_noise: float = NOISY_CV) -> dict[str, Any]:
    """A full record: shape, workload and provenance, overlaid with what the backend measured.

    ``workload`` holds ``batch_size, input_len, output_len, repeats, tp``;
    ``measured`` holds the backend's fields (``gpu``, ``tokens_per_s``,
    ``status``, ...). Columns nobody set are None, so every record has every
    column. A measurement whose repeats scatter more than ``max_noise`` (std
    over mean) is ``noisy`` (:func:`mark_noisy`).
    """
    record: dict[str, Any] = dict.fromkeys(COLUMNS)
    record.update(shape_fields(arch))
    record.update(source=source, backend=backend, status="ok", error=None,
                  torch_version=package_version("torch"), vllm_version=None,
                  archscale_version=archscale_version(), timestamp=now_utc())
    record.update({k: workload[k] for k in ("batch_size", "input_len", "output_len", "repeats", "tp")})
    unknown = set(measured) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown record field(s): {', '.join(sorted(unknown))}")
    record.update(measured)
    mark_noisy(record, max_noise)
    if record["error"] is not None:
        record["error"] = one_line(record["error"])
    return record


def mark_noisy(record: dict[str, Any], max_noise: float = NOISY_CV) -> None:
    """Turn an ``ok`` record whose repeats disagree (std over ``max_noise`` of the mean) into ``noisy``, saying why.

    Done here, where every backend's record is made, so no backend can report such a row as ``ok``.
    """
    mean, std = record.get("tokens_per_s"), record.get("tokens_per_s_std")
    if record.get("status") != "ok" or not mean or std is None or not math.isfinite(std) or std <= max_noise * mean:
        return
    record["status"] = "noisy"
    record["error"] = (f"repeats disagree: std {std:,.0f} is {std / mean:.0%} of the mean {mean:,.0f} tokens/s "
                       f"(a busy machine?; the limit is {max_noise:.0%}); rerun with more --repeats on a quiet machine")


def failed(error: object, **fields: Any) -> dict[str, Any]:
    """The measured part of a failed benchmark: status ``failed``, a one-line error, and no throughput or latency."""
    return {**fields, "status": "failed", "error": one_line(error),
            "tokens_per_s": None, "output_tokens_per_s": None, "tokens_per_s_std": None, **dict.fromkeys(LATENCY_COLUMNS)}


def cpu_model_name() -> str:
    """``cpu: <model name>``: how every backend records a CPU as its device (the same string in every row)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine() or "unknown")
