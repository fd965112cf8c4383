"""Serving throughput of a decoder shape on one device: a roofline plus what real engines spend besides.

Why more than a roofline: on the dissertation's own vLLM measurements (Table
6.3) a decode step of LLaMA-3.2-1B at batch 64 on an H200 spends roughly 8%
of its time reading weights, 30% reading the KV cache and more than half on
work that scales with neither bytes nor FLOPs (scheduling, per-request
bookkeeping, kernel launches). A pure roofline has no term for that, so it
predicts that cutting KV bytes 4x nearly halves the step, and it overstates
every KV-saving shape's speedup. This model keeps the roofline's bytes and
FLOPs and adds those times as terms a calibration fits
(:mod:`archscale.bench.calibrate`, stored as a :class:`~archscale.serving.profiles.Profile`).

The workload is vLLM's offline throughput benchmark: ``batch_size`` requests
of ``input_len`` prompt tokens, each generating ``output_len`` tokens, all
submitted together. For ``c`` sequences running at once:

* **Prefill** (compute-bound): ``c * input_len`` prompt tokens in passes of at
  most ``prefill_chunk_tokens`` (vLLM's ``max_num_batched_tokens``). FLOPs
  ``2 N`` per token (non-embedding weights), attention ``4 L d_q`` per
  (token, earlier token) pair (``q K^T`` and the weighted sum over ``V``;
  the paper's Appendix C.2 counts only the first, ``2 L T d_q``), and the LM
  head for the last prompt token of each sequence, where the first output
  token is sampled. Time ``max(FLOPs / (peak eta_compute), bytes /
  bandwidth))`` plus each pass's fixed time (bandwidth scaled by ``eta_weights``
  for weights, ``eta_kv`` for the KV cache).
* **Decode**: ``output_len - 1`` steps (the first output token comes from
  the prefill); the step at context ``s`` reads the weights the step touches
  (non-embedding and LM head: ``N + V d`` elements), the batch's KV cache
  (``c s`` tokens) and the logits (``c V`` entries, about four fp32 passes:
  cast, temperature, softmax, sample), and computes ``c (2 N + 4 L d_q s + 2 V
  d)`` FLOPs; it takes the roofline ``max`` of the two, plus ``t_step + c
  t_seq + L t_layer`` (+ ``2 L`` all-reduces under tensor parallelism). The
  roofline part is affine in ``s`` on both sides, so the sum over steps is
  exact in closed form (:func:`_sum_max_affine`): no loop over steps or rows.
* **KV capacity**: the engine may use ``memory_fraction`` of the device
  (vLLM's ``gpu_memory_utilization``) minus the weights, a fixed reserve and
  the activations of one prefill pass; what is left holds the KV cache (or a
  fixed ``kv_cache_gib``, as vLLM's CPU backend is configured). When the batch's
  KV cache does not fit, the engine runs as many sequences as fit, and the
  rest wait (waves); ``concurrency`` says how many ran at once, and a model
  whose weights alone do not fit gets ``concurrency`` 0 and 0 tokens/s.
* **Tensor parallelism** ``tp``: FLOPs, weights and KV heads split ``tp``
  ways; when ``tp`` exceeds the KV heads, each GPU holds one KV head (and its
  K/V projections) replicated, as vLLM does; each forward pass adds two
  all-reduces per layer of ``t_allreduce + message / link bandwidth``.
* **Mixture of Experts** (rows with ``n_experts`` E > 1; the MoE columns of
  :meth:`~archscale.shapes.architecture.Architecture.shape_columns`, absent or 0
  in a dense table): the memory holds every expert (total parameters); FLOPs
  per token are the active ones (k routed experts, the shared experts, the
  router, attention and the dense layers). A forward pass of ``t`` tokens
  reads the dense parts once and, in each MoE layer, the routed experts its
  tokens touch: with uniform routing ``E (1 - (1 - k/E)^t)`` distinct ones
  in expectation (:func:`expected_distinct_experts`), each ``3 d d_expert``
  weights. A decode step has ``t = c``; each prefill pass its own tokens (a
  full chunk touches all E as soon as it holds a few times E/k tokens). Under
  tensor parallelism every expert's matrices split ``tp`` ways like a dense
  MLP's (vLLM's default for MoE; its expert parallelism is not modelled). A
  dense row gives exactly what it gave before experts were modelled.

Output: total (prompt + generated) and output tokens/s of the whole batch.
Published vLLM figures are usually one of the two without saying which;
archscale always names the unit (docs/throughput-units.md).

**Latency** (what serving engineers limit): every estimate also carries
TTFT, TPOT and ITL per request (mean, p50, p90, p99, in ms), the columns a
measured bench row has. Request ``j`` of a wave gets its first token when the
prefill pass holding the end of its prompt completes; its first outputs then
wait on the remaining prefill passes (vLLM runs decodes of finished prompts
in the same passes as the remaining chunks), the rest on decode steps; later
waves queue behind earlier ones (:class:`_Wave`, :func:`_latency_columns`).
Where the engine starts on the first request before the others arrive
(:attr:`EngineSettings.first_prompt_alone`), the first prompt has passes of
its own.
**Under a limit** (:class:`LatencyLimits`, e.g. TPOT p99 <= 40 ms) a shape
serves at the most requests that meet it (:func:`max_concurrency`, a
vectorised bisection over the batch), and :func:`estimate_under_limits`
gives its throughput there: the operating point ``search --tpot-ms`` ranks by.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any, Callable

import numpy as np
import pandas as pd

from archscale.shapes.architecture import MOE_FIELDS, Architecture, non_embedding_params, require_serving_modelled
from archscale.serving.devices import GPU
from archscale.io.errors import UserError
from archscale.io.vocabulary import LATENCY_PERCENTILES, LATENCY_STATISTICS, latency_column

LOGIT_BYTES_PER_ENTRY = 16.0
"""Bytes moved per logit entry per sampled token: about four fp32 passes (cast, temperature, softmax, sample)."""
ALLREDUCES_PER_LAYER = 2
"""Attention output and MLP output are each reduced across tensor-parallel ranks (the TP report's Eq. 9)."""


@dataclass(frozen=True)
class Workload:
    """An offline batch: ``batch_size`` requests, ``input_len`` prompt and ``output_len`` generated tokens each."""

    batch_size: int
    input_len: int
    output_len: int

    def __post_init__(self) -> None:
        for field_name in ("batch_size", "input_len", "output_len"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise UserError(f"workload {field_name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class CostTerms:
    """The terms a calibration fits; the defaults are the uncalibrated roofline.

    ``eta_compute`` is the achieved fraction of peak FLOP/s; ``eta_weights``
    and ``eta_kv`` the achieved fractions of peak bandwidth when reading the
    weights (and logits) and when reading the KV cache. They differ on real
    engines: a decode step reads the weights as dozens of small skinny matrix
    products of a few microseconds each, far from saturating HBM, while
    attention streams the KV cache of the whole batch in long reads. Defaults
    are llm-analysis's (0.7 for compute, 0.9 for memory). The times are
    what engines spend besides bytes and FLOPs; an uncalibrated estimate has
    none of them, which is why it is optimistic. ``t_allreduce`` defaults to
    102 us: the least-squares fit of this model (its other terms
    uncalibrated) to Databricks' measured bandwidth utilisation of
    Llama-2-70B (bf16, 138 GB of weights by archscale's count) at batch 1 on
    A100-40GB, 55% at TP4 and 38% at TP8, as the tensor-parallel report quotes
    them (99 us from TP4 alone, 106 us from TP8 alone;
    ``experiments/reproduce/allreduce_latency.py``). It is an effective cost
    per all-reduce, everything tensor parallelism adds that the model has no
    other term for, not a NCCL latency; an earlier 40 us came from the
    report's 71.34 GB, which halves the weights.

    ``t_expert_gb`` is the seconds each GB of routed expert weights a pass reads adds *after* the roofline's max:
    0 (the default) puts the experts inside it, as a GPU overlaps them with compute; an engine whose MoE kernel
    streams the experts group by group (vLLM's CPU grouped GEMM) pays for them on top. It is fitted only on MoE rows.

    ``t_attn_gflop`` is the seconds each GFLOP of decode attention over the context (``q K^T`` and the sum over V,
    which grow with the query heads, the depth and the context) adds *after* the roofline's max: 0 (the default)
    puts that work inside it at ``eta_compute``; an engine that runs its attention kernel apart from the matrix
    products, at its own lower rate, pays for it on top. No calibration chooses it unless asked (``bench calibrate
    --fit`` with the term named).
    """

    eta_compute: float = 0.7
    eta_weights: float = 0.9
    eta_kv: float = 0.9
    t_step: float = 0.0
    t_seq: float = 0.0
    t_layer: float = 0.0
    t_allreduce: float = 102e-6
    t_expert_gb: float = 0.0
    t_attn_gflop: float = 0.0

    def __post_init__(self) -> None:
        for name in TERM_BOUNDS:
            value = getattr(self, name)
            problem = term_out_of_bounds(name, value)
            if problem:
                raise UserError(f"cost term {problem}, got {value!r}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


TERM_BOUNDS: dict[str, tuple[float, float]] = {
    "eta_compute": (0.02, 1.0),
    "eta_weights": (0.02, 1.0),
    "eta_kv": (0.02, 1.0),
    "t_step": (0.0, 0.1),
    "t_seq": (0.0, 0.01),
    "t_layer": (0.0, 0.01),
    "t_allreduce": (0.0, 0.01),
    "t_expert_gb": (0.0, 10.0),
    "t_attn_gflop": (0.0, 1.0),
}


def term_out_of_bounds(name: str, value: Any) -> str | None:
    """``"NAME must be in [LOW, HIGH]"`` when ``value`` is not a finite number within the term's bounds, else None."""
    low, high = TERM_BOUNDS[name]
    if isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high:
        return None
    return f"{name} must be in [{low:g}, {high:g}]"


TERM_MEANING: dict[str, str] = {
    "eta_compute": "fraction of peak FLOP/s reached (prefill, and decode where it is compute-bound)",
    "eta_weights": "fraction of peak bandwidth reached reading the weights and logits",
    "eta_kv": "fraction of peak bandwidth reached reading the KV cache",
    "t_step": "seconds per forward pass besides bytes and FLOPs (scheduler, input preparation, launches)",
    "t_seq": "seconds per running sequence per decode step (per-request bookkeeping and sampling)",
    "t_layer": "seconds per layer per forward pass (kernel launch gaps)",
    "t_allreduce": "seconds of latency per tensor-parallel all-reduce",
    "t_expert_gb": "seconds per GB of routed expert weights a pass reads, beyond the roofline (MoE rows only)",
    "t_attn_gflop": "seconds per GFLOP of decode attention over the context, beyond the roofline",
}
TERM_NAMES = tuple(f.name for f in fields(CostTerms))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


_ENGINE_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "memory_fraction": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1], the engine's share of device memory"),
    "max_num_seqs": (lambda v: _finite(v) and int(v) == v and v >= 1, "a positive integer, the most sequences at once"),
    "prefill_chunk_tokens": (lambda v: _finite(v) and int(v) == v and v >= 1, "a positive number of tokens"),
    "reserved_gib": (lambda v: _finite(v) and v >= 0, "a number of GiB >= 0"),
    "kv_cache_gib": (lambda v: v is None or (_finite(v) and v > 0), "a positive number of GiB"),
    "first_prompt_alone": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
}
"""What each :class:`EngineSettings` field admits, and how to say so."""


@dataclass(frozen=True)
class EngineSettings:
    """How the serving engine is configured: read off the engine, not fitted.

    Defaults are vLLM's: 90% of device memory, up to 256 sequences, prefill
    passes of 8,192 tokens, and 1 GiB outside the weights and KV cache (CUDA
    context, CUDA graphs, allocator slack). ``kv_cache_gib`` fixes the KV
    space instead (vLLM's CPU backend takes it from ``VLLM_CPU_KVCACHE_SPACE``).

    ``first_prompt_alone``: the requests reach the engine one after another,
    and it starts the first prefill before the others are there, so the first
    prompt gets passes of its own and the first request's decode then waits on
    every other prompt's passes. vLLM's offline ``LLM`` hands requests to its
    engine core one by one; on this project's CPU measurements that shows as
    TTFT mean below p50 and TPOT p99 at 1.85x p50 at batch 4, where all prompts
    fit one pass (``experiments/results/cpu_vllm_latency/README.md``). It is a
    race between handing over the requests and the engine's first pass: vLLM
    bench rows record how often the engine started alone
    (:mod:`archscale.bench.records`), and ``bench calibrate`` reads it there.
    Off by default (every prompt there at the start), as the GPU throughput
    rows shipped here carry no per-request timings to tell.
    """

    memory_fraction: float = 0.9
    max_num_seqs: int = 256
    prefill_chunk_tokens: int = 8192
    reserved_gib: float = 1.0
    kv_cache_gib: float | None = None
    first_prompt_alone: bool = False

    def prefill_shift(self, input_len) -> np.ndarray:
        """Prompt tokens the first prefill pass leaves empty: none when all prompts are there at the start; with
        ``first_prompt_alone`` (requests reach the engine one after another, and it starts on the first before the
        rest arrive) the rest of the first prompt's last pass, so the other prompts start on a pass of their own."""
        prompt = np.asarray(input_len, dtype=np.float64)
        if not self.first_prompt_alone:
            return np.zeros_like(prompt)
        chunk = float(self.prefill_chunk_tokens)
        return np.ceil(prompt / chunk) * chunk - prompt

    def __post_init__(self) -> None:
        self.refuse_bad_values(self.as_dict())

    @staticmethod
    def refuse_bad_values(values: dict, labels: dict[str, str] | None = None) -> None:
        """One line for the first value out of its range, named by ``labels`` (the CLI's flags; by default the
        field names a profile JSON uses): the one rule for every way settings are given."""
        for name, value in values.items():
            admits, expected = _ENGINE_RULES[name]
            if not admits(value):
                label = (labels or {}).get(name, name)
                raise UserError(f"{label} must be {expected}, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ThroughputEstimate:
    """What :func:`estimate_throughput` predicts for one architecture.

    ``total_tokens_per_s`` counts prompt and generated tokens (vLLM's
    benchmark's "total"), ``output_tokens_per_s`` generated tokens only;
    ``prefill_s``/``decode_s`` are summed over waves; ``concurrency`` is how
    many sequences ran at once (``batch_size`` when ``fits``); ``memory_gb``
    is what the whole batch would need at once (decimal GB) and
    ``memory_used_gb`` what the engine holds; ``bound`` is the resource that
    dominates the roofline part of decode.
    """

    total_tokens_per_s: float
    output_tokens_per_s: float
    prefill_s: float
    decode_s: float
    memory_gb: float
    memory_used_gb: float
    fits: bool
    bound: str
    concurrency: int

    def as_dict(self) -> dict:
        return asdict(self)


def why_nothing_runs(memory_used_gb: float, device: GPU, tp: int, settings: EngineSettings, workload: Workload) -> str:
    """Why a shape serves no request (concurrency 0), from its estimate's ``memory_used_gb``: its weights, with the
    engine's reserve, exceed the memory the engine may use; or they fit and one request's KV cache does not."""
    used_gib = memory_used_gb * 1e9 / 2**30
    room_gib = tp * device.memory_gb * settings.memory_fraction
    if settings.kv_cache_gib is None and used_gib >= room_gib:
        return (f"weights alone do not fit: {tp} x {device.name} ({tp * device.memory_gb:.0f} GiB) at memory "
                f"fraction {settings.memory_fraction:g}")
    kv_room = settings.kv_cache_gib if settings.kv_cache_gib is not None else room_gib - used_gib
    return (f"one request of {workload.input_len + workload.output_len:,} tokens does not fit: its KV cache needs "
            f"more than the {kv_room:.1f} GiB left beside the weights; shorten --input-len/--output-len")


def check_tensor_parallel(n_heads, n_kv_heads, tp: int, label: str = "") -> None:
    """vLLM's rule: ``tp`` divides the query heads, and divides or is a multiple of the KV heads."""
    if not isinstance(tp, (int, np.integer)) or isinstance(tp, bool) or tp < 1:
        raise UserError(f"--tp must be a positive integer, got {tp!r}")
    heads, kv = np.asarray(n_heads), np.asarray(n_kv_heads)
    bad = (heads % tp != 0) | ((kv % tp != 0) & (tp % kv != 0))
    if bad.any():
        index = int(np.flatnonzero(np.atleast_1d(bad))[0])
        h, k = int(np.atleast_1d(heads)[index]), int(np.atleast_1d(kv)[index])
        what = f"{label}: " if label else ""
        raise UserError(f"{what}--tp {tp} does not split {h} query heads and {k} KV heads across GPUs "
                        f"(tp must divide the query heads, and divide or be a multiple of the KV heads)")


def estimate_throughput(arch: Architecture, gpu: GPU, workload: Workload, tp: int = 1, terms: CostTerms = CostTerms(),
                        engine: EngineSettings = EngineSettings(), bytes_per_element: int = 2) -> ThroughputEstimate:
    """Throughput of one architecture (the vectorised model on a one-row frame)."""
    require_serving_costed(arch.shape_columns(), arch.name or "architecture")
    check_tensor_parallel(arch.n_heads, arch.n_kv_heads, tp, arch.name or "architecture")
    frame = pd.DataFrame([arch.shape_columns()])
    row = estimate_throughput_many(frame, gpu, workload, tp, terms, engine, bytes_per_element).iloc[0]
    return ThroughputEstimate(
        total_tokens_per_s=float(row["tokens_per_s"]),
        output_tokens_per_s=float(row["output_tokens_per_s"]),
        prefill_s=float(row["prefill_s"]),
        decode_s=float(row["decode_s"]),
        memory_gb=float(row["memory_gb"]),
        memory_used_gb=float(row["memory_used_gb"]),
        fits=bool(row["fits"]),
        bound=str(row["bound"]),
        concurrency=int(row["concurrency"]),
    )


def estimate_throughput_many(candidates: pd.DataFrame, gpu: GPU, workload: Workload, tp: int = 1,
                             terms: CostTerms = CostTerms(), engine: EngineSettings = EngineSettings(),
                             bytes_per_element: int = 2, with_latency: bool = True) -> pd.DataFrame:
    """Throughput of every row of a candidate table, with numpy over rows.

    ``candidates`` needs ``n_layers, d_model, n_heads, n_kv_heads, d_head,
    d_ff`` and ``vocab`` (or ``vocab_size``); ``tie_embeddings`` is optional
    (default untied), and so are the MoE columns (default dense; empty cells
    too). Rows whose heads ``tp`` cannot split are a UserError (filter them
    first; :func:`archscale.shapes.candidates.generate_candidates` does).
    Returns a frame on the same index with ``tokens_per_s`` (total),
    ``output_tokens_per_s``, ``prefill_s``, ``decode_s``, ``memory_gb``,
    ``memory_used_gb``, ``fits``, ``bound`` and ``concurrency``, and (``with_latency``) the TTFT, TPOT and ITL
    columns, which are three quarters of the cost: a search ranking a million shapes at a fixed batch leaves them to
    its picks.
    """
    if not isinstance(bytes_per_element, (int, float)) or bytes_per_element <= 0:
        raise UserError(f"bytes per element must be positive, got {bytes_per_element!r}")
    shape = _shape_arrays(candidates)
    if len(candidates):
        check_tensor_parallel(shape["n_heads"].astype(np.int64), shape["n_kv_heads"].astype(np.int64), tp)
    runs = _RowWorkload(batch=np.float64(workload.batch_size), input_len=np.float64(workload.input_len),
                        output_len=np.float64(workload.output_len), tp=np.float64(tp),
                        bytes_per_element=np.float64(bytes_per_element))
    return pd.DataFrame(_estimate(shape, runs, gpu, terms, engine, with_latency=with_latency), index=candidates.index)


def estimate_rows(rows: pd.DataFrame, gpu: GPU, terms: CostTerms = CostTerms(),
                  engine: EngineSettings = EngineSettings()) -> pd.DataFrame:
    """Throughput of rows that each carry their own workload: what calibration compares with measurements.

    ``rows`` holds the shape columns plus ``batch_size``, ``input_len``,
    ``output_len``, and optionally ``tp`` (default 1) and ``bytes_per_element``
    (default 2). One vectorised evaluation for all rows.
    """
    estimate = row_estimator(rows, gpu, engine, with_latency=True)(terms)
    return pd.DataFrame(estimate, index=rows.index)


def row_estimator(rows: pd.DataFrame, gpu: GPU, engine: EngineSettings = EngineSettings(), with_latency: bool = False,
                  statistics: tuple = ()):
    """:func:`estimate_rows` with the rows read once: a function of the terms alone, for a fit to call thousands of times
    (the latency columns only when asked, and only ``statistics`` of them when given: they are most of the cost)."""
    shape = _shape_arrays(rows)
    column = lambda name, default: (rows[name].to_numpy(dtype=np.float64) if name in rows  # noqa: E731
                                    else np.full(len(rows), float(default)))
    runs = _RowWorkload(batch=column("batch_size", 1), input_len=column("input_len", 1), output_len=column("output_len", 1),
                        tp=column("tp", 1), bytes_per_element=column("bytes_per_element", 2))
    if len(rows):
        check_tensor_parallel(shape["n_heads"].astype(np.int64), shape["n_kv_heads"].astype(np.int64), 1)
        for tp in np.unique(runs.tp).astype(int):
            rows_at = runs.tp == tp
            check_tensor_parallel(shape["n_heads"][rows_at].astype(np.int64), shape["n_kv_heads"][rows_at].astype(np.int64), int(tp))

    def estimate(terms: CostTerms) -> dict[str, np.ndarray]:
        return _estimate(shape, runs, gpu, terms, engine, with_bound=False, with_latency=with_latency,
                         statistics=statistics)

    return estimate


# ---- pieces ----------------------------------------------------------------------
@dataclass(frozen=True)
class _RowWorkload:
    """Workload, tensor-parallel degree and element width: scalars, or arrays with one value per row."""

    batch: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray
    tp: np.ndarray
    bytes_per_element: np.ndarray


def _estimate(shape: dict, runs: _RowWorkload, gpu: GPU, terms: CostTerms, engine: EngineSettings,
              with_bound: bool = True, with_latency: bool = True, statistics: tuple = (), cost: dict | None = None) -> dict:
    """The model on arrays: memory and concurrency, waves, prefill and decode, tokens/s (and, if asked, the bound
    and the latency columns: every statistic, or only ``statistics``). ``cost``: :func:`_per_gpu_costs` if already
    computed for these rows."""
    cost = _per_gpu_costs(shape, runs.tp, runs.bytes_per_element) if cost is None else cost
    memory = _memory(cost, gpu, runs, engine)
    concurrency = memory["concurrency"]
    full_waves, remainder = np.divmod(runs.batch, np.maximum(concurrency, 1))
    full_waves = np.broadcast_to(full_waves, np.shape(concurrency))
    remainder = np.broadcast_to(remainder, np.shape(concurrency))
    phases = _batch_times(cost, concurrency, gpu, runs, terms, engine)
    prefill, decode = full_waves * phases["prefill"], full_waves * phases["decode"]
    last_wave = {key: np.zeros(np.shape(concurrency)) for key in ("prefill", "decode", "passes")}
    capped = np.flatnonzero(remainder > 0)
    if len(capped):  # a last, smaller wave where the KV cache capped concurrency (only those rows: cheap at 10^6)
        rest = _batch_times(_take(cost, capped), remainder[capped], gpu,
                            _RowWorkload(**_take(runs.__dict__, capped)), terms, engine)
        for key in last_wave:
            last_wave[key][capped] = rest[key]
        prefill, decode = prefill + last_wave["prefill"], decode + last_wave["decode"]
    total = prefill + decode
    active = concurrency >= 1
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(active, runs.batch * (runs.input_len + runs.output_len) / total, 0.0)
        output = np.where(active, runs.batch * runs.output_len / total, 0.0)
    estimate = {
        "tokens_per_s": tokens,
        "output_tokens_per_s": output,
        "prefill_s": np.where(active, prefill, np.inf),
        "decode_s": np.where(active, decode, np.inf),
        "memory_gb": memory["needed"] / 1e9,
        "memory_used_gb": memory["used"] / 1e9,
        "fits": memory["fits"],
        "concurrency": concurrency,
    }
    if with_bound:
        estimate["bound"] = _decode_bound(cost, concurrency, gpu, runs, terms)
    if with_latency:
        waves = _Waves(concurrency=np.asarray(concurrency, dtype=np.float64), full=full_waves.astype(np.float64),
                       remainder=remainder.astype(np.float64), full_phases=phases, last_phases=last_wave)
        estimate.update(_latency_columns(waves, runs, engine, statistics or LATENCY_STATISTICS))
    return estimate


def _take(arrays: dict, rows: np.ndarray) -> dict:
    """The given rows of every per-row array in ``arrays`` (scalars pass through)."""
    return {key: (value[rows] if np.ndim(value) else value) for key, value in arrays.items()}


def require_serving_costed(columns, label: str) -> None:
    """Refuse, in one line, a shape (an Architecture's ``shape_columns()``, or a table of them) this model would cost
    as something else: latent attention and sliding windows
    (:func:`~archscale.shapes.architecture.require_serving_modelled`)."""
    require_serving_modelled(columns, label)


def expected_distinct_experts(n_experts, experts_per_token, tokens):
    """Routed experts one MoE layer reads for ``tokens`` tokens: ``E (1 - (1 - k/E)^tokens)`` in expectation.

    Why not k, nor E: each token picks k of the E experts; with uniform routing an expert is missed by one token
    with probability ``1 - k/E``, by all of them with that to the power ``tokens``. One decode sequence reads k;
    a batch reads more, towards all E. 0 where ``n_experts`` <= 1 (a dense row) or ``tokens`` is 0.
    """
    experts = np.asarray(n_experts, dtype=np.float64)
    safe = np.maximum(experts, 1.0)
    missed = np.power(1.0 - np.asarray(experts_per_token, dtype=np.float64) / safe, tokens)
    return np.where(experts > 1, safe * (1.0 - missed), 0.0)


def _shape_arrays(candidates: pd.DataFrame) -> dict[str, np.ndarray]:
    """Pull the shape columns out as float64 arrays (the parameter counts exactly, via int64).

    Every entry point reads its rows here, so a row this model would cost as something else (latent attention, a
    sliding window: :func:`require_serving_costed`) is refused here. The MoE columns are optional: a table
    without them (or with empty cells, as a store holding dense and MoE rows has) is dense."""
    require_serving_costed(candidates, "serving estimate")
    needed = ["n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff"]
    vocab_column = "vocab" if "vocab" in candidates else "vocab_size"
    missing = [c for c in needed + [vocab_column] if c not in candidates]
    if missing:
        raise UserError(f"candidate table is missing column(s) {', '.join(missing)}")
    ints = {c: candidates[c].to_numpy(dtype=np.int64) for c in needed}
    shape = {c: v.astype(np.float64) for c, v in ints.items()}
    shape["vocab"] = candidates[vocab_column].to_numpy(dtype=np.float64)
    shape["tied"] = (candidates["tie_embeddings"].to_numpy(dtype=bool) if "tie_embeddings" in candidates
                     else np.zeros(len(candidates), dtype=bool))
    experts = _moe_columns(candidates)
    dense = (ints["n_layers"], ints["d_model"], ints["n_heads"], ints["n_kv_heads"], ints["d_head"], ints["d_ff"])
    shape["n_non_embed"] = non_embedding_params(*dense, **experts).astype(np.float64)
    moe = experts["n_experts"] > 1
    _check_routing(experts, moe)
    shape["moe"] = bool(moe.any())
    if not shape["moe"]:
        shape["n_active"] = shape["n_non_embed"]
        return shape
    shape["n_active"] = non_embedding_params(*dense, **experts, active=True).astype(np.float64)
    shape["moe_layers"] = np.where(moe, ints["n_layers"] - experts["first_dense_layers"], 0).astype(np.float64)
    for name in ("n_experts", "experts_per_token", "expert_d_ff"):
        shape[name] = experts[name].astype(np.float64)
    shape["mlp_width"] = np.maximum(shape["d_ff"], np.where(  # the widest MLP a token goes through
        moe, experts["experts_per_token"] * experts["expert_d_ff"]
        + experts["n_shared_experts"] * experts["shared_expert_d_ff"], 0).astype(np.float64))
    return shape


def _check_routing(experts: dict[str, np.ndarray], moe: np.ndarray) -> None:
    """An MoE row whose tokens pick k of E experts needs 1 <= k <= E (as the Architecture requires of one shape)."""
    k = experts["experts_per_token"]
    bad = np.flatnonzero(moe & ((k < 1) | (k > experts["n_experts"])))
    if len(bad):
        row = int(bad[0])
        raise UserError(f"serving estimate: row {row + 1} has experts_per_token {int(k[row])} with n_experts "
                        f"{int(experts['n_experts'][row])} (each token picks k of the E routed experts: 1 <= k <= E)")


def _moe_columns(candidates: pd.DataFrame) -> dict[str, np.ndarray]:
    """The MoE columns as int64 arrays, 0 (dense) where a column or a cell is absent."""
    zeros = np.zeros(len(candidates), dtype=np.int64)
    return {name: (pd.to_numeric(candidates[name], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
                   if name in candidates else zeros) for name in MOE_FIELDS}


def _per_gpu_costs(shape: dict, tp, bytes_per_element) -> dict[str, np.ndarray]:
    """Per-GPU quantities both phases share: weights, KV bytes per token, FLOPs per token.

    Under tensor parallelism every matrix is split ``tp`` ways, except the K and
    V projections when ``tp`` exceeds the KV heads: each GPU then keeps one KV
    head of its own (vLLM replicates them), so its K/V weights and KV cache are
    those of one head, not ``n_kv / tp``. Experts split like dense MLPs.

    ``weight_read_bytes`` is what every forward pass reads: all weights but the routed experts;
    ``expert_read_bytes`` one routed expert of every MoE layer, read once per distinct expert a pass touches
    (:func:`_weights_read`); 0 for dense rows.
    """
    n_layers, d_model, d_head = shape["n_layers"], shape["d_model"], shape["d_head"]
    kv_heads_per_gpu = np.maximum(shape["n_kv_heads"] / tp, 1.0)
    kv_projection = 2.0 * n_layers * d_model * d_head * shape["n_kv_heads"]
    kv_projection_per_gpu = 2.0 * n_layers * d_model * d_head * kv_heads_per_gpu
    body_per_gpu = (shape["n_non_embed"] - kv_projection) / tp + kv_projection_per_gpu
    lm_head_per_gpu = shape["vocab"] * d_model / tp
    embedding_tables = np.where(shape["tied"], 1.0, 2.0)
    if shape["moe"]:
        expert = 3.0 * d_model * shape["expert_d_ff"] * shape["moe_layers"]  # one expert in every MoE layer
        routed, mlp_width = expert * shape["n_experts"], shape["mlp_width"]
    else:
        expert, routed, mlp_width = 0.0, 0.0, shape["d_ff"]
    return {
        "n_layers": n_layers,
        "d_model": d_model,
        "tp": np.asarray(tp, dtype=np.float64),
        "flops_per_token": 2.0 * shape["n_active"] / tp,
        "flops_per_context": 4.0 * n_layers * shape["n_heads"] * d_head / tp,  # q K^T and the sum over V
        "flops_lm_head": 2.0 * lm_head_per_gpu,
        "weight_read_bytes": (body_per_gpu - routed / tp + lm_head_per_gpu) * bytes_per_element,
        "expert_read_bytes": expert / tp * bytes_per_element,
        "n_experts": shape.get("n_experts", 0.0),
        "experts_per_token": shape.get("experts_per_token", 0.0),
        "weight_bytes": (body_per_gpu + embedding_tables * lm_head_per_gpu) * bytes_per_element,
        "kv_bytes": 2.0 * n_layers * kv_heads_per_gpu * d_head * bytes_per_element,
        "activation_bytes_per_token": (d_model + (shape["n_heads"] * d_head + 3.0 * mlp_width) / tp
                                       + 2.0 * kv_heads_per_gpu * d_head) * bytes_per_element,
        "logit_bytes_per_sequence": shape["vocab"] / tp * 4.0,  # fp32 logits
        "vocab": shape["vocab"],
    }


def _memory(cost, gpu: GPU, runs: _RowWorkload, engine: EngineSettings) -> dict[str, np.ndarray]:
    """Per-GPU memory: needed for the whole batch at once, used, whether it fits, and concurrency."""
    tokens_per_sequence = runs.input_len + runs.output_len
    activations = (engine.prefill_chunk_tokens * cost["activation_bytes_per_token"]
                   + np.minimum(runs.batch, engine.max_num_seqs) * cost["logit_bytes_per_sequence"])
    fixed = cost["weight_bytes"] + engine.reserved_gib * 2**30 + activations
    kv_per_sequence = tokens_per_sequence * cost["kv_bytes"]
    needed = fixed + runs.batch * kv_per_sequence
    if engine.kv_cache_gib is not None:
        kv_room, weights_fit = np.full_like(fixed, engine.kv_cache_gib * 2**30), np.ones_like(fixed, dtype=bool)
    else:
        budget = gpu.memory_bytes * engine.memory_fraction
        kv_room, weights_fit = np.maximum(budget - fixed, 0.0), fixed < budget
    max_sequences = np.where(weights_fit, np.floor(kv_room / kv_per_sequence), 0.0)
    concurrency = np.minimum(np.minimum(max_sequences, runs.batch), engine.max_num_seqs).astype(np.int64)
    return {
        "needed": needed * cost["tp"],
        "used": np.where(concurrency > 0, fixed + concurrency * kv_per_sequence, fixed) * cost["tp"],
        # the KV cache holds the whole batch at once; a batch above max_num_seqs still fits, and runs in waves of it
        "fits": max_sequences >= runs.batch,
        "concurrency": concurrency,
    }


def _rates(gpu: GPU, terms: CostTerms) -> tuple[float, float, float]:
    """Achievable FLOP/s, and byte/s reading weights and reading the KV cache, of one GPU."""
    return (gpu.flops_per_s * terms.eta_compute, gpu.bytes_per_s * terms.eta_weights,
            gpu.bytes_per_s * terms.eta_kv)


def _pass_overhead(cost, tokens_per_pass, gpu: GPU, terms: CostTerms) -> np.ndarray:
    """Fixed seconds of one forward pass: ``t_step + L t_layer``, and the all-reduces under tensor parallelism."""
    overhead = terms.t_step + cost["n_layers"] * terms.t_layer
    tp = cost["tp"]
    if np.all(tp <= 1):
        return overhead
    message = tokens_per_pass * cost["d_model"] * 2.0  # bf16 activations of every token in the pass
    ring = 2.0 * (tp - 1.0) / tp * message / (gpu.interconnect_gb_s * 1e9)
    return overhead + np.where(tp > 1, ALLREDUCES_PER_LAYER * cost["n_layers"] * (terms.t_allreduce + ring), 0.0)


def _weights_read(cost, tokens) -> np.ndarray:
    """Weight bytes one forward pass of ``tokens`` tokens reads: the dense parts, and each distinct routed expert."""
    return cost["weight_read_bytes"] + _routed_expert_bytes(cost, tokens)


def _routed_expert_bytes(cost, tokens) -> np.ndarray | float:
    """Bytes of routed expert weights one pass of ``tokens`` tokens reads (0 for a dense row)."""
    if not np.any(cost["expert_read_bytes"]):
        return 0.0
    return cost["expert_read_bytes"] * expected_distinct_experts(cost["n_experts"], cost["experts_per_token"], tokens)


def _serial_expert_seconds(expert_bytes, terms: CostTerms) -> np.ndarray | float:
    """``t_expert_gb`` times the routed expert GB read: what the experts cost beyond the roofline's max."""
    return terms.t_expert_gb * expert_bytes / 1e9 if terms.t_expert_gb else 0.0


def _serial_attention_seconds(cost, c, first, steps, terms: CostTerms) -> np.ndarray | float:
    """``t_attn_gflop`` times the GFLOP of attention over the context that decode steps ``first`` .. ``first + steps
    - 1`` compute for ``c`` sequences: what that attention costs beyond the roofline's max."""
    if not terms.t_attn_gflop:
        return 0.0
    return terms.t_attn_gflop * c * cost["flops_per_context"] * _sum_affine(0.0, 1.0, first, steps) / 1e9


def _decode_lines(cost, c, gpu: GPU, terms: CostTerms):
    """Roofline seconds of decode step ``s`` as two lines: compute ``a_c + b_c s`` and memory ``a_m + b_m s``."""
    flops_rate, weights_rate, kv_rate = _rates(gpu, terms)
    a_c = c * (cost["flops_per_token"] + cost["flops_lm_head"]) / flops_rate
    b_c = c * cost["flops_per_context"] / flops_rate
    a_m = (_weights_read(cost, c) + c * cost["vocab"] * LOGIT_BYTES_PER_ENTRY) / weights_rate
    b_m = c * cost["kv_bytes"] / kv_rate
    return a_c, b_c, a_m, b_m


def _batch_times(cost, concurrency, gpu: GPU, runs: _RowWorkload, terms: CostTerms,
                 engine: EngineSettings) -> dict[str, np.ndarray]:
    """Prefill and decode seconds for ``concurrency`` sequences run together (0 sequences take 0 s)."""
    c = np.asarray(concurrency, dtype=np.float64)
    prompt_tokens = c * runs.input_len
    shift = engine.prefill_shift(runs.input_len)
    passes = np.ceil((prompt_tokens + shift) / engine.prefill_chunk_tokens)
    prefill_experts = _prefill_expert_bytes(cost, c, passes, runs.input_len, engine.prefill_chunk_tokens, shift)
    prefill = (_prefill_roofline(cost, c, passes, runs.input_len, prefill_experts, gpu, terms)
               + passes * _pass_overhead(cost, np.minimum(prompt_tokens, engine.prefill_chunk_tokens), gpu, terms)
               + _serial_expert_seconds(prefill_experts, terms))
    steps = runs.output_len - 1  # the first output token is sampled from the prefill
    per_step = (_pass_overhead(cost, c, gpu, terms) + c * terms.t_seq
                + _serial_expert_seconds(_routed_expert_bytes(cost, c), terms))
    decode = (_sum_max_affine(*_decode_lines(cost, c, gpu, terms), runs.input_len + 1, steps) + steps * per_step
              + _serial_attention_seconds(cost, c, runs.input_len + 1, steps, terms))
    active = c > 0
    return {"prefill": np.where(active, prefill, 0.0), "decode": np.where(active, decode, 0.0),
            "passes": np.where(active, passes, 0.0)}


def _prefill_expert_bytes(cost, c, passes, input_len, chunk: int, shift=0.0) -> np.ndarray | float:
    """Routed expert bytes the prefill reads: the experts each pass touches, over full passes of ``chunk`` tokens,
    then the rest (0 for a dense row). With a ``shift`` (:meth:`EngineSettings.prefill_shift`) the first prompt's
    last pass holds only ``chunk - shift`` tokens: the layout is that of ``shift`` more tokens, less those."""
    if not np.any(cost["expert_read_bytes"]):
        return 0.0
    full = np.maximum(passes - 1.0, 0.0)
    last = np.maximum(c * input_len + shift - full * chunk, 0.0)
    per_full_pass = _routed_expert_bytes(cost, float(chunk))
    if not np.any(shift):  # every prompt there at the start: the common case, and the search's hot path
        return full * per_full_pass + _routed_expert_bytes(cost, last)
    first_prompt_ends_before_last = np.ceil(np.asarray(input_len, dtype=np.float64) / chunk) < passes
    partial = np.where(first_prompt_ends_before_last,
                       _routed_expert_bytes(cost, last) - per_full_pass + _routed_expert_bytes(cost, chunk - shift),
                       _routed_expert_bytes(cost, np.maximum(last - shift, 0.0)))
    return full * per_full_pass + partial


def _prefill_roofline(cost, c, passes, input_len, expert_bytes, gpu: GPU, terms: CostTerms) -> np.ndarray:
    """All prompts through the model: FLOPs in closed form over positions; the dense weights read once per pass,
    and ``expert_bytes`` of routed experts (:func:`_prefill_expert_bytes`)."""
    flops_rate, weights_rate, kv_rate = _rates(gpu, terms)
    flops = c * (input_len * cost["flops_per_token"]
                 + cost["flops_per_context"] * input_len * (input_len - 1) / 2.0
                 + cost["flops_lm_head"])
    weights = passes * cost["weight_read_bytes"] + expert_bytes
    traffic = weights / weights_rate + c * input_len * cost["kv_bytes"] / kv_rate
    return np.maximum(flops / flops_rate, traffic)


def _decode_bound(cost, concurrency, gpu: GPU, runs: _RowWorkload, terms: CostTerms) -> pd.Categorical:
    """Which resource dominates the roofline part of decode, "memory" or "compute" (categorical: cheap at 10^6 rows)."""
    a_c, b_c, a_m, b_m = _decode_lines(cost, np.asarray(concurrency, dtype=np.float64), gpu, terms)
    steps = np.maximum(runs.output_len - 1, 1)
    compute = _sum_affine(a_c, b_c, runs.input_len + 1, steps)
    memory = _sum_affine(a_m, b_m, runs.input_len + 1, steps)
    return pd.Categorical.from_codes(np.broadcast_to(memory >= compute, np.shape(a_c)).astype(np.int8),
                                     categories=["compute", "memory"])


def _sum_affine(a, b, first, count):
    """``sum_{s=first}^{first+count-1} (a + b s)``; zero when ``count <= 0``."""
    count = np.maximum(count, 0)
    last = first + count - 1
    return count * a + b * (first + last) * count / 2.0


def _sum_max_affine(a1, b1, a2, b2, first, count) -> np.ndarray:
    """Exact ``sum_{s=first}^{first+count-1} max(a1 + b1 s, a2 + b2 s)``, elementwise over arrays.

    It is line 2's sum plus ``(a1 - a2) + (b1 - b2) s`` over the steps where
    line 1 is higher. The difference of two affine functions changes sign at
    most once, so those steps are a prefix or a suffix of the range: find its
    length, then add arithmetic series (``first`` and ``count`` may be scalars,
    and are not broadcast, which keeps this cheap at 10^6 rows).
    """
    first, count = np.asarray(first, dtype=np.float64), np.maximum(np.asarray(count, dtype=np.float64), 0.0)
    last = first + count - 1
    da, db = np.subtract(a1, a2, dtype=np.float64), np.subtract(b1, b2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = -da / db  # line 1 is higher above the root when db > 0, below it when db < 0
    rising = db > 0
    start = np.where(rising, np.clip(np.ceil(root), first, last + 1), first)
    stop = np.where(rising, last, np.clip(np.floor(root), first - 1, last))
    flat = db == 0
    if flat.any():
        start, stop = np.where(flat, first, start), np.where(flat, np.where(da > 0, last, first - 1), stop)
    wins = stop - start + 1
    return _sum_affine(a2, b2, first, count) + wins * da + db * (start + stop) * wins / 2.0


# ---- latency -----------------------------------------------------------------------
def parse_statistic(text: str, flag: str = "--percentile") -> str | int:
    """``p99`` -> 99, ``mean`` -> "mean"; a statistic the bench rows do not carry is refused in one line."""
    value = str(text).strip().lower()
    if value == "mean":
        return "mean"
    if value.startswith("p") and value[1:].isdigit() and int(value[1:]) in LATENCY_PERCENTILES:
        return int(value[1:])
    known = ", ".join(f"p{p}" for p in LATENCY_PERCENTILES)
    raise UserError(f"{flag} {text!r}: not a measured statistic; bench rows and estimates carry {known} and mean")


@dataclass(frozen=True)
class LatencyLimits:
    """What a deployment must meet: TPOT and/or TTFT at most so many milliseconds, at one statistic over requests.

    MLPerf's interactive Llama-2-70B scenario, for example, is p99 TTFT <= 450 ms and p99 TPOT <= 40 ms.
    """

    tpot_ms: float | None = None
    ttft_ms: float | None = None
    statistic: str | int = 99

    def __post_init__(self) -> None:
        if self.tpot_ms is None and self.ttft_ms is None:
            raise UserError("a latency limit needs --tpot-ms and/or --ttft-ms")
        for flag, value in (("--tpot-ms", self.tpot_ms), ("--ttft-ms", self.ttft_ms)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{flag} must be a positive number of milliseconds, got {value!r}")
        if self.statistic not in LATENCY_STATISTICS:
            parse_statistic(str(self.statistic))

    @property
    def statistic_label(self) -> str:
        return "mean" if self.statistic == "mean" else f"p{self.statistic}"

    def describe(self) -> str:
        parts = [f"{name} {self.statistic_label} <= {value:g} ms"
                 for name, value in (("TPOT", self.tpot_ms), ("TTFT", self.ttft_ms)) if value is not None]
        return " and ".join(parts)

    @property
    def bounded(self) -> dict[str, float]:
        """{latency column: its limit in ms} for what these limits bound (TPOT, TTFT or both, at their statistic)."""
        return {latency_column(metric, self.statistic): limit
                for metric, limit in (("tpot", self.tpot_ms), ("ttft", self.ttft_ms)) if limit is not None}

    def met(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of an estimate or bench table meet the limits (a missing figure does not)."""
        ok = np.ones(len(frame), dtype=bool)
        for column, limit in self.bounded.items():
            ok &= (frame[column].to_numpy(dtype=float) <= limit)
        return ok


def max_concurrency(candidates: pd.DataFrame, gpu: GPU, workload: Workload, limits: LatencyLimits, tp: int = 1,
                    terms: CostTerms = CostTerms(), engine: EngineSettings = EngineSettings(),
                    bytes_per_element: int = 2) -> np.ndarray:
    """Per row, the most requests ``c`` (at most ``workload.batch_size`` and what the KV cache holds) that, submitted
    together as ``bench`` measures them, meet ``limits``; 0 where not even one request does.

    TTFT and TPOT grow with ``c`` (more prompts to prefill before the last one, more sequences per decode step), so
    a bisection over ``c`` finds the largest that passes: about ``log2(batch)`` vectorised evaluations of the model
    over all rows, no loop over rows or batch sizes.
    """
    shape = _shape_arrays(candidates)
    if len(candidates):
        check_tensor_parallel(shape["n_heads"].astype(np.int64), shape["n_kv_heads"].astype(np.int64), tp)
    return _max_concurrency(shape, gpu, workload, limits, tp, terms, engine, bytes_per_element)[0]


def _max_concurrency(shape: dict, gpu: GPU, workload: Workload, limits: LatencyLimits, tp: int, terms: CostTerms,
                     engine: EngineSettings, bytes_per_element: float) -> tuple[np.ndarray, dict]:
    """:func:`max_concurrency` on shape arrays already read; also the per-GPU costs it computed, for reuse."""
    runs = _RowWorkload(batch=np.float64(workload.batch_size), input_len=np.float64(workload.input_len),
                        output_len=np.float64(workload.output_len), tp=np.float64(tp),
                        bytes_per_element=np.float64(bytes_per_element))
    cost = _per_gpu_costs(shape, runs.tp, runs.bytes_per_element)
    capacity = _memory(cost, gpu, runs, engine)["concurrency"].astype(np.float64)

    def meets(c: np.ndarray) -> np.ndarray:
        wave = _Wave.of(c, _batch_times(cost, c, gpu, runs, terms, engine), runs, engine)
        ok = np.ones(np.shape(c), dtype=bool)
        if limits.tpot_ms is not None:  # one output token has no TPOT: nothing to limit
            ok &= np.nan_to_num(wave.tpot_at(limits.statistic) * 1e3, nan=0.0) <= limits.tpot_ms
        if limits.ttft_ms is not None:
            ok &= wave.ttft_at(limits.statistic) * 1e3 <= limits.ttft_ms
        return ok

    low, high = np.zeros_like(capacity), capacity  # invariant: low meets (0 trivially), high + 1 does not
    while (open_rows := low < high).any():
        middle = np.where(open_rows, np.ceil((low + high) / 2.0), high)
        ok = meets(np.maximum(middle, 1.0))
        low = np.where(open_rows & ok, middle, low)
        high = np.where(open_rows & ~ok, middle - 1.0, high)
    return low.astype(np.int64), cost


def estimate_under_limits(candidates: pd.DataFrame, gpu: GPU, workload: Workload, limits: LatencyLimits, tp: int = 1,
                          terms: CostTerms = CostTerms(), engine: EngineSettings = EngineSettings(),
                          bytes_per_element: int = 2) -> pd.DataFrame:
    """:func:`estimate_throughput_many` at each row's own operating point: the batch of :func:`max_concurrency`.

    Rows that cannot meet the limits even alone are estimated at one request (so their nearest miss can be shown)
    and have ``meets_limits`` False. ``operating_batch`` is the batch each row was estimated at.
    """
    shape = _shape_arrays(candidates)
    if len(candidates):
        check_tensor_parallel(shape["n_heads"].astype(np.int64), shape["n_kv_heads"].astype(np.int64), tp)
    chosen, cost = _max_concurrency(shape, gpu, workload, limits, tp, terms, engine, bytes_per_element)
    batch = np.maximum(chosen, 1).astype(np.float64)
    runs = _RowWorkload(batch=batch, input_len=np.float64(workload.input_len), output_len=np.float64(workload.output_len),
                        tp=np.float64(tp), bytes_per_element=np.float64(bytes_per_element))
    frame = pd.DataFrame(_estimate(shape, runs, gpu, terms, engine, with_bound=False, cost=cost,
                                   statistics=(limits.statistic,)), index=candidates.index)
    frame["operating_batch"] = batch.astype(np.int64)
    frame["meets_limits"] = chosen >= 1
    return frame


@dataclass(frozen=True)
class _Waves:
    """How a batch ran: ``full`` waves of ``concurrency`` sequences, then one of ``remainder``, with each kind's
    prefill and decode seconds and prefill passes."""

    concurrency: np.ndarray
    full: np.ndarray
    remainder: np.ndarray
    full_phases: dict
    last_phases: dict


@dataclass(frozen=True)
class _Wave:
    """Per-request timing inside one wave of ``size`` sequences submitted together.

    Request ``j`` (in submission order) gets its first token when the prefill
    pass that holds the end of its prompt completes, pass ``ceil((j + 1)
    input_len / chunk)``. It then decodes, and as vLLM's chunked prefill runs
    the decodes of finished prompts in the same forward passes as the
    remaining prompt chunks, its first ``P - pass_j`` output tokens wait on
    the rest of the prefill rather than on decode steps. So early requests have
    the shortest TTFT and the longest TPOT. The prefill's time is spread over
    its passes by the prompt tokens each holds (the last pass is only partly
    full: measured on vLLM on a CPU, TTFT p50/p99 at 32 prompts of 320 tokens in
    passes of 4,096 was 0.80, as token-timed passes predict, where equal passes
    predict 0.67); decode steps each take the wave's average. An engine
    without chunked prefill is a wave of one pass (all prompts in it).
    """

    size: np.ndarray
    passes: np.ndarray
    prefill_s: np.ndarray
    step_s: np.ndarray
    steps: np.ndarray
    input_len: np.ndarray
    chunk: float
    shift: np.ndarray
    """Empty tokens of the first pass (:meth:`EngineSettings.prefill_shift`): pass ``k`` ends at ``k chunk - shift``."""

    @classmethod
    def of(cls, size, phases: dict, runs: "_RowWorkload", engine: EngineSettings) -> "_Wave":
        passes = np.maximum(phases["passes"], 1.0)
        steps = np.asarray(runs.output_len - 1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_s = np.where(steps > 0, phases["decode"] / np.maximum(steps, 1.0), np.nan)
        return cls(size=np.asarray(size, dtype=np.float64), passes=passes, prefill_s=phases["prefill"],
                   step_s=step_s, steps=steps, input_len=np.asarray(runs.input_len, dtype=np.float64),
                   chunk=float(engine.prefill_chunk_tokens), shift=engine.prefill_shift(runs.input_len))

    @property
    def pass_s(self) -> np.ndarray:
        """The average prefill pass: the gap a decoding request sees while prompts are still being filled."""
        return self.prefill_s / self.passes

    @property
    def seconds(self) -> np.ndarray:
        return self.prefill_s + np.where(self.steps > 0, self.steps * np.nan_to_num(self.step_s), 0.0)

    @property
    def prompt_tokens(self) -> np.ndarray:
        return np.maximum(self.size, 1.0) * self.input_len

    def pass_end(self, finished_pass) -> np.ndarray:
        """Seconds from the wave's start to the end of prefill pass ``finished_pass``: its share of the prompt tokens."""
        done = np.minimum(np.asarray(finished_pass, dtype=np.float64) * self.chunk - self.shift, self.prompt_tokens)
        return self.prefill_s * done / self.prompt_tokens

    def pass_of(self, request) -> np.ndarray:
        """The prefill pass (1-based) in which request ``request`` (0-based) finishes its prompt."""
        ends_at = (np.asarray(request, dtype=np.float64) + 1.0) * self.input_len + self.shift
        return np.clip(np.ceil(ends_at / self.chunk), 1.0, self.passes)

    @cached_property
    def mean_pass(self) -> np.ndarray:
        """Mean of :meth:`pass_of` over the wave's requests, exactly: ``sum_j ceil((j + 1) a / m) / size``."""
        size = np.maximum(np.broadcast_to(self.size, np.shape(self.passes)), 1.0).astype(np.int64)
        prompt = np.broadcast_to(self.input_len, size.shape).astype(np.int64)
        chunk = np.full(size.shape, int(self.chunk), dtype=np.int64)
        shift = np.broadcast_to(self.shift, size.shape).astype(np.int64)
        total = _floor_sum(size, chunk, prompt, prompt + shift + chunk - 1)
        return np.clip(total / size, 1.0, self.passes)

    def ttft(self, request) -> np.ndarray:
        return self.pass_end(self.pass_of(request))

    @cached_property
    def mean_ttft(self) -> np.ndarray:
        """Mean TTFT over the wave, exactly: every request ends at its pass's share of the tokens, and those finishing
        in the last pass end with the whole prefill (``min(P_j chunk, tokens)``)."""
        size = np.maximum(self.size, 1.0)
        before_last = np.floor(((self.passes - 1.0) * self.chunk - self.shift) / self.input_len)
        finishing_last = np.clip(size - before_last, 0.0, size)
        done = ((self.chunk * self.mean_pass - self.shift) * size
                - (self.passes * self.chunk - self.shift - self.prompt_tokens) * finishing_last)
        return self.prefill_s * done / size / self.prompt_tokens

    def tpot_given_pass(self, finished_pass) -> np.ndarray:
        """TPOT of a request whose prompt ends in pass ``finished_pass``: its first outputs wait on the rest of the
        prefill (one output per remaining pass), the others on decode steps."""
        remaining = self.passes - finished_pass
        overlap = np.minimum(remaining, self.steps)
        with np.errstate(divide="ignore", invalid="ignore"):
            waiting = np.where(remaining > 0, (self.prefill_s - self.pass_end(finished_pass)) * overlap
                               / np.maximum(remaining, 1e-12), 0.0)
            return (waiting + (self.steps - overlap) * self.step_s) / self.steps

    def rank(self, percentile: float) -> np.ndarray:
        """0-based nearest-rank position of the ``percentile``-th request of this wave."""
        return np.maximum(np.ceil(percentile / 100.0 * self.size) - 1.0, 0.0)

    def ttft_at(self, statistic: str | int) -> np.ndarray:
        """TTFT (s) of this wave alone: its mean, or its ``statistic``-th percentile over requests."""
        if statistic == "mean":
            return self.mean_ttft
        return self.ttft(self.rank(float(statistic)))

    def tpot_at(self, statistic: str | int) -> np.ndarray:
        """TPOT (s) of this wave: mean, or percentile (TPOT falls with a request's position, so the p-th percentile is
        the request that many places from the end)."""
        if statistic == "mean":
            return self.tpot_given_pass(self.mean_pass)
        return self.tpot_given_pass(self.pass_of(np.maximum(self.size, 1.0) - 1.0 - self.rank(float(statistic))))

    def mixed_share(self) -> np.ndarray:
        """Share of this wave's inter-token gaps that are prefill passes rather than decode steps."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.steps > 0, np.minimum(self.passes - self.mean_pass, self.steps) / self.steps, 0.0)


def _latency_columns(waves: _Waves, runs: "_RowWorkload", engine: EngineSettings,
                     statistics: tuple = LATENCY_STATISTICS) -> dict[str, np.ndarray]:
    """TTFT, TPOT and ITL (ms): mean and :data:`LATENCY_PERCENTILES` over the batch's requests, as a bench row has them.

    Requests of later waves queue behind the earlier waves (their TTFT adds the
    earlier waves' time). Percentiles are nearest-rank over the requests; TPOT
    and ITL percentiles are those of a full wave (of the only wave when the
    whole batch ran at once). Rows where nothing fits get NaN.
    """
    full = _Wave.of(waves.concurrency, waves.full_phases, runs, engine)
    last = _Wave.of(waves.remainder, waves.last_phases, runs, engine)
    batch = waves.full * waves.concurrency + waves.remainder
    active = waves.concurrency >= 1
    columns: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        chosen = _select_wave(waves.full >= 1, full, last)
        for p in (p for p in LATENCY_PERCENTILES if p in statistics):
            rank = np.maximum(np.ceil(p / 100.0 * batch) - 1.0, 0.0)
            wave = np.minimum(np.floor(rank / np.maximum(waves.concurrency, 1.0)), waves.full)
            in_last = wave >= waves.full
            position = rank - wave * waves.concurrency
            ttft = wave * full.seconds + np.where(in_last, last.ttft(position), full.ttft(position))
            tpot = chosen.tpot_at(p)
            gaps = (chosen.pass_s, chosen.step_s)
            slow_share = np.where(gaps[0] >= gaps[1], chosen.mixed_share(), 1.0 - chosen.mixed_share())
            itl = np.where(p / 100.0 > 1.0 - slow_share, np.maximum(*gaps), np.minimum(*gaps))
            for metric, value in (("ttft", ttft), ("tpot", tpot), ("itl", itl)):
                columns[latency_column(metric, p)] = np.where(active, value * 1e3, np.nan)
    if "mean" not in statistics:
        return columns
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_ttft = (waves.concurrency * full.seconds * waves.full * (waves.full - 1.0) / 2.0
                     + waves.full * waves.concurrency * full.ttft_at("mean")
                     + waves.remainder * (waves.full * full.seconds + last.ttft_at("mean"))) / batch
        tpot_full, tpot_last = full.tpot_at("mean"), last.tpot_at("mean")
        mean_tpot = (waves.full * waves.concurrency * np.nan_to_num(tpot_full)
                     + waves.remainder * np.nan_to_num(tpot_last)) / batch
        mean_tpot = np.where(np.asarray(runs.output_len) > 1, mean_tpot, np.nan)
    columns[latency_column("ttft", "mean")] = np.where(active, mean_ttft * 1e3, np.nan)
    columns[latency_column("tpot", "mean")] = np.where(active, mean_tpot * 1e3, np.nan)
    # every request has output_len - 1 gaps, so the mean over pooled gaps is the mean TPOT
    columns[latency_column("itl", "mean")] = columns[latency_column("tpot", "mean")]
    return columns


def _select_wave(use_full: np.ndarray, full: _Wave, last: _Wave) -> _Wave:
    """Per row, the full wave's timing where there is one, else the last (only) wave's."""
    pick = lambda a, b: np.where(use_full, a, b)  # noqa: E731
    return _Wave(size=pick(full.size, last.size), passes=pick(full.passes, last.passes),
                 prefill_s=pick(full.prefill_s, last.prefill_s),
                 step_s=pick(full.step_s, last.step_s), steps=full.steps, input_len=full.input_len, chunk=full.chunk,
                 shift=full.shift)


_FLOOR_SUMS: dict[tuple, np.ndarray] = {}
_FLOOR_SUMS_KEPT = 256
"""Recent :func:`_floor_sum` results by their inputs. A calibration evaluates the same rows' workloads thousands of
times while only the time terms change, and the pass counts depend on the workload alone."""


def _floor_sum(n: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_{i=0}^{n-1} floor((a i + b) / m)`` elementwise for non-negative integer arrays, in O(log m) vector passes
    (the Euclid-like reduction of AtCoder's ``floor_sum``): the exact mean prefill pass of a wave without a loop
    over its requests. Small inputs are remembered (:data:`_FLOOR_SUMS`)."""
    n, m, a, b = (np.array(v, dtype=np.int64, copy=True) for v in np.broadcast_arrays(n, m, a, b))
    if n.size > 4096:
        return _floor_sum_of(n, m, a, b)
    key = (n.shape, n.tobytes(), m.tobytes(), a.tobytes(), b.tobytes())
    if key not in _FLOOR_SUMS:
        if len(_FLOOR_SUMS) >= _FLOOR_SUMS_KEPT:
            _FLOOR_SUMS.clear()
        _FLOOR_SUMS[key] = _floor_sum_of(n, m, a, b)
    return _FLOOR_SUMS[key].copy()


def _floor_sum_of(n: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_floor_sum` computed (its int64 inputs are consumed)."""
    total = np.zeros(n.shape, dtype=np.float64)
    live = n > 0
    while live.any():
        whole_a, whole_b = np.where(live, a // m, 0), np.where(live, b // m, 0)
        total += n * (n - 1) / 2.0 * whole_a + n * whole_b
        a, b = np.where(live, a % m, a), np.where(live, b % m, b)
        top = a * n + b
        live &= top >= m
        n, b = np.where(live, top // m, n), np.where(live, top % m, b)
        m, a = np.where(live, a, m), np.where(live, m, a)
    return total
