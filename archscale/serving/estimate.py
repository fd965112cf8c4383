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

Output: total (prompt + generated) and output tokens/s of the whole batch.
Published vLLM figures are usually one of the two without saying which;
archscale always names the unit (docs/throughput-units.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from archscale.shapes.architecture import Architecture, non_embedding_params
from archscale.serving.devices import GPU
from archscale.io.errors import UserError

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
    40 us, the latency that reproduces Databricks' measured bandwidth
    utilisation of Llama-2-70B on A100s (55% at TP4, 38% at TP8, quoted in the
    tensor-parallel report; ``experiments/reproduce/allreduce_latency.py``).
    """

    eta_compute: float = 0.7
    eta_weights: float = 0.9
    eta_kv: float = 0.9
    t_step: float = 0.0
    t_seq: float = 0.0
    t_layer: float = 0.0
    t_allreduce: float = 40e-6

    def __post_init__(self) -> None:
        for name, (low, high) in TERM_BOUNDS.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise UserError(f"cost term {name} must be in [{low:g}, {high:g}], got {value!r}")

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
}
TERM_MEANING: dict[str, str] = {
    "eta_compute": "fraction of peak FLOP/s reached (prefill, and decode where it is compute-bound)",
    "eta_weights": "fraction of peak bandwidth reached reading the weights and logits",
    "eta_kv": "fraction of peak bandwidth reached reading the KV cache",
    "t_step": "seconds per forward pass besides bytes and FLOPs (scheduler, input preparation, launches)",
    "t_seq": "seconds per running sequence per decode step (per-request bookkeeping and sampling)",
    "t_layer": "seconds per layer per forward pass (kernel launch gaps)",
    "t_allreduce": "seconds of latency per tensor-parallel all-reduce",
}
TERM_NAMES = tuple(f.name for f in fields(CostTerms))


@dataclass(frozen=True)
class EngineSettings:
    """How the serving engine is configured: read off the engine, not fitted.

    Defaults are vLLM's: 90% of device memory, up to 256 sequences, prefill
    passes of 8,192 tokens, and 1 GiB outside the weights and KV cache (CUDA
    context, CUDA graphs, allocator slack). ``kv_cache_gib`` fixes the KV
    space instead (vLLM's CPU backend takes it from ``VLLM_CPU_KVCACHE_SPACE``).
    """

    memory_fraction: float = 0.9
    max_num_seqs: int = 256
    prefill_chunk_tokens: int = 8192
    reserved_gib: float = 1.0
    kv_cache_gib: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.memory_fraction <= 1:
            raise UserError(f"memory fraction must be in (0, 1], got {self.memory_fraction!r}")
        if int(self.max_num_seqs) < 1 or int(self.prefill_chunk_tokens) < 1:
            raise UserError("max_num_seqs and prefill_chunk_tokens must be positive integers")
        if self.reserved_gib < 0 or (self.kv_cache_gib is not None and not self.kv_cache_gib > 0):
            raise UserError("reserved_gib must be >= 0 and kv_cache_gib positive when given")

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
                             bytes_per_element: int = 2) -> pd.DataFrame:
    """Throughput of every row of a candidate table, with numpy over rows.

    ``candidates`` needs ``n_layers, d_model, n_heads, n_kv_heads, d_head,
    d_ff`` and ``vocab`` (or ``vocab_size``); ``tie_embeddings`` is optional
    (default untied). Rows whose heads ``tp`` cannot split are a UserError
    (filter them first; :func:`archscale.shapes.candidates.generate_candidates` does).
    Returns a frame on the same index with ``tokens_per_s`` (total),
    ``output_tokens_per_s``, ``prefill_s``, ``decode_s``, ``memory_gb``,
    ``memory_used_gb``, ``fits``, ``bound`` and ``concurrency``.
    """
    if not isinstance(bytes_per_element, (int, float)) or bytes_per_element <= 0:
        raise UserError(f"bytes per element must be positive, got {bytes_per_element!r}")
    shape = _shape_arrays(candidates)
    if len(candidates):
        check_tensor_parallel(shape["n_heads"].astype(np.int64), shape["n_kv_heads"].astype(np.int64), tp)
    runs = _RowWorkload(batch=np.float64(workload.batch_size), input_len=np.float64(workload.input_len),
                        output_len=np.float64(workload.output_len), tp=np.float64(tp),
                        bytes_per_element=np.float64(bytes_per_element))
    return pd.DataFrame(_estimate(shape, runs, gpu, terms, engine), index=candidates.index)


def estimate_rows(rows: pd.DataFrame, gpu: GPU, terms: CostTerms = CostTerms(),
                  engine: EngineSettings = EngineSettings()) -> pd.DataFrame:
    """Throughput of rows that each carry their own workload: what calibration compares with measurements.

    ``rows`` holds the shape columns plus ``batch_size``, ``input_len``,
    ``output_len``, and optionally ``tp`` (default 1) and ``bytes_per_element``
    (default 2). One vectorised evaluation for all rows.
    """
    estimate = row_estimator(rows, gpu, engine)(terms)
    return pd.DataFrame(estimate, index=rows.index)


def row_estimator(rows: pd.DataFrame, gpu: GPU, engine: EngineSettings = EngineSettings()):
    """:func:`estimate_rows` with the rows read once: a function of the terms alone, for a fit to call thousands of times."""
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
        return _estimate(shape, runs, gpu, terms, engine, with_bound=False)

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
              with_bound: bool = True) -> dict:
    """The model on arrays: memory and concurrency, waves, prefill and decode, tokens/s (and, if asked, the bound)."""
    cost = _per_gpu_costs(shape, runs.tp, runs.bytes_per_element)
    memory = _memory(cost, gpu, runs, engine)
    concurrency = memory["concurrency"]
    full_waves, remainder = np.divmod(runs.batch, np.maximum(concurrency, 1))
    phases = _batch_times(cost, concurrency, gpu, runs, terms, engine)
    prefill, decode = full_waves * phases["prefill"], full_waves * phases["decode"]
    capped = np.flatnonzero(np.broadcast_to(remainder, np.shape(concurrency)) > 0)
    if len(capped):  # a last, smaller wave where the KV cache capped concurrency (only those rows: cheap at 10^6)
        rest = _batch_times(_take(cost, capped), np.broadcast_to(remainder, np.shape(concurrency))[capped], gpu,
                            _RowWorkload(**_take(runs.__dict__, capped)), terms, engine)
        prefill, decode = prefill.copy(), decode.copy()
        prefill[capped] += rest["prefill"]
        decode[capped] += rest["decode"]
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
    return estimate


def _take(arrays: dict, rows: np.ndarray) -> dict:
    """The given rows of every per-row array in ``arrays`` (scalars pass through)."""
    return {key: (value[rows] if np.ndim(value) else value) for key, value in arrays.items()}


def _shape_arrays(candidates: pd.DataFrame) -> dict[str, np.ndarray]:
    """Pull the shape columns out as float64 arrays (the parameter count exactly, via int64)."""
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
    shape["n_non_embed"] = non_embedding_params(ints["n_layers"], ints["d_model"], ints["n_heads"],
                                                ints["n_kv_heads"], ints["d_head"], ints["d_ff"]).astype(np.float64)
    return shape


def _per_gpu_costs(shape: dict, tp, bytes_per_element) -> dict[str, np.ndarray]:
    """Per-GPU quantities both phases share: weights, KV bytes per token, FLOPs per token.

    Under tensor parallelism every matrix is split ``tp`` ways, except the K and
    V projections when ``tp`` exceeds the KV heads: each GPU then keeps one KV
    head of its own (vLLM replicates them), so its K/V weights and KV cache are
    those of one head, not ``n_kv / tp``.
    """
    n_layers, d_model, d_head = shape["n_layers"], shape["d_model"], shape["d_head"]
    kv_heads_per_gpu = np.maximum(shape["n_kv_heads"] / tp, 1.0)
    kv_projection = 2.0 * n_layers * d_model * d_head * shape["n_kv_heads"]
    kv_projection_per_gpu = 2.0 * n_layers * d_model * d_head * kv_heads_per_gpu
    body_per_gpu = (shape["n_non_embed"] - kv_projection) / tp + kv_projection_per_gpu
    lm_head_per_gpu = shape["vocab"] * d_model / tp
    embedding_tables = np.where(shape["tied"], 1.0, 2.0)
    return {
        "n_layers": n_layers,
        "d_model": d_model,
        "tp": np.asarray(tp, dtype=np.float64),
        "flops_per_token": 2.0 * shape["n_non_embed"] / tp,
        "flops_per_context": 4.0 * n_layers * shape["n_heads"] * d_head / tp,  # q K^T and the sum over V
        "flops_lm_head": 2.0 * lm_head_per_gpu,
        "weight_read_bytes": (body_per_gpu + lm_head_per_gpu) * bytes_per_element,
        "weight_bytes": (body_per_gpu + embedding_tables * lm_head_per_gpu) * bytes_per_element,
        "kv_bytes": 2.0 * n_layers * kv_heads_per_gpu * d_head * bytes_per_element,
        "activation_bytes_per_token": (d_model + (shape["n_heads"] * d_head + 3.0 * shape["d_ff"]) / tp
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
        "fits": concurrency >= runs.batch,
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


def _decode_lines(cost, c, gpu: GPU, terms: CostTerms):
    """Roofline seconds of decode step ``s`` as two lines: compute ``a_c + b_c s`` and memory ``a_m + b_m s``."""
    flops_rate, weights_rate, kv_rate = _rates(gpu, terms)
    a_c = c * (cost["flops_per_token"] + cost["flops_lm_head"]) / flops_rate
    b_c = c * cost["flops_per_context"] / flops_rate
    a_m = (cost["weight_read_bytes"] + c * cost["vocab"] * LOGIT_BYTES_PER_ENTRY) / weights_rate
    b_m = c * cost["kv_bytes"] / kv_rate
    return a_c, b_c, a_m, b_m


def _batch_times(cost, concurrency, gpu: GPU, runs: _RowWorkload, terms: CostTerms,
                 engine: EngineSettings) -> dict[str, np.ndarray]:
    """Prefill and decode seconds for ``concurrency`` sequences run together (0 sequences take 0 s)."""
    c = np.asarray(concurrency, dtype=np.float64)
    prompt_tokens = c * runs.input_len
    passes = np.ceil(prompt_tokens / engine.prefill_chunk_tokens)
    prefill = (_prefill_roofline(cost, c, passes, runs.input_len, gpu, terms)
               + passes * _pass_overhead(cost, np.minimum(prompt_tokens, engine.prefill_chunk_tokens), gpu, terms))
    steps = runs.output_len - 1  # the first output token is sampled from the prefill
    per_step = _pass_overhead(cost, c, gpu, terms) + c * terms.t_seq
    decode = _sum_max_affine(*_decode_lines(cost, c, gpu, terms), runs.input_len + 1, steps) + steps * per_step
    active = c > 0
    return {"prefill": np.where(active, prefill, 0.0), "decode": np.where(active, decode, 0.0)}


def _prefill_roofline(cost, c, passes, input_len, gpu: GPU, terms: CostTerms) -> np.ndarray:
    """All prompts through the model: FLOPs in closed form over positions; weights read once per pass."""
    flops_rate, weights_rate, kv_rate = _rates(gpu, terms)
    flops = c * (input_len * cost["flops_per_token"]
                 + cost["flops_per_context"] * input_len * (input_len - 1) / 2.0
                 + cost["flops_lm_head"])
    traffic = passes * cost["weight_read_bytes"] / weights_rate + c * input_len * cost["kv_bytes"] / kv_rate
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

    The difference of two affine functions changes sign at most once, so line
    1 wins on a prefix or a suffix of the range; find its length, then add two
    arithmetic series.
    """
    a1, b1, a2, b2, first, count = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                                         for v in (a1, b1, a2, b2, first, count)))
    last = first + count - 1
    da, db = a1 - a2, b1 - b2
    with np.errstate(divide="ignore", invalid="ignore"):
        root = -da / db
    # Count of steps where line 1 wins, and whether they form the suffix (db > 0) or the prefix (db <= 0).
    wins_suffix = db > 0
    start = np.clip(np.ceil(np.where(wins_suffix, root, 0.0)), first, last + 1)
    stop = np.clip(np.floor(np.where(wins_suffix, 0.0, root)), first - 1, last)
    stop = np.where(db == 0, np.where(da >= 0, last, first - 1), stop)
    line1_count = np.where(wins_suffix, last + 1 - start, stop - first + 1)
    line1_first = np.where(wins_suffix, start, first)
    line2_first = np.where(wins_suffix, first, first + line1_count)
    return (_sum_affine(a1, b1, line1_first, line1_count)
            + _sum_affine(a2, b2, line2_first, count - line1_count))
