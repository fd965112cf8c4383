"""Analytic serving throughput: a per-step roofline over prefill and every decode step.

Why analytic: the search scores 10^5 shapes, far too many to benchmark. The
roofline gets the *directions* of the dissertation's Figures 6.2-6.5 (wider,
higher-r, higher-GQA models at fixed N are faster) from first principles:
decode reads every weight and the batch's whole KV cache once per step, so
fewer KV heads and fewer query heads (``d_q`` sets the attention FLOPs)
speed it up. Absolute numbers need the efficiencies calibrated against a
benchmark (:class:`Efficiency`); until then they are optimistic.

Model (vLLM-style offline batch: ``batch_size`` requests of ``input_len``
prompt tokens each generating ``output_len`` tokens, all started together):

* Prefill of the running batch ``c``:
  FLOPs ``c * sum_{p<I} flops_per_token(p)`` (closed form
  ``c (2 N I + 2 L d_q I (I-1)/2)``) plus the LM head for the *last* prompt
  token of each sequence only (``2 V d``; vLLM computes prompt logits only
  where a token is sampled). Bytes: every weight read once, plus the KV cache
  written (``c I kv_bytes``).
* Decode step ``s`` for ``s = I .. I+O-1`` (the brief's convention: ``O``
  steps, the token at step ``s`` attending to ``s`` cached tokens; vLLM gets
  the first output token from prefill, so this counts one step too many, a
  ``1/O`` difference): FLOPs ``c (flops_per_token(s) + 2 V d)``; bytes: the
  non-embedding weights plus the LM head (``N + V d`` elements: the input
  embedding is a gather of ``c`` rows, not a full read, whether tied or not)
  plus the KV cache read ``c s kv_bytes``.
* Each phase takes ``max(FLOPs / (peak eta_c), bytes / (bandwidth eta_m))``.
  Both arguments are affine in ``s``, so the sum over decode steps is exact in
  closed form (:func:`_sum_max_affine`): no loop over steps, no loop over
  candidates.
* Tensor parallel ``tp``: FLOPs and bytes divide by ``tp``; each forward pass
  (every decode step, and the prefill) adds ``2 n_layers t_sync`` (two
  all-reduces per layer, the tensor-parallel report's Eq. 9).
* Memory: weights + KV for ``batch (I + O)`` tokens + overhead must fit in
  ``tp * memory * 0.9`` (vLLM's default ``gpu_memory_utilization``). The
  overhead is ``1 GB`` per GPU (CUDA context, CUDA graphs, allocator slack)
  plus the activations vLLM's profiling pass reserves: a prefill chunk of
  ``8192`` tokens times ``(d + d_q + 2 d_kv + 3 d_ff)`` elements, and fp32
  logits for the batch. When the batch's KV cache does not fit, vLLM does not
  fail: it runs as many sequences at once as their full KV fits
  (``concurrency``) and queues the rest. The estimate does the same (the
  batch runs in waves of ``concurrency``) and reports ``fits=False``; a model
  whose weights alone do not fit gets ``concurrency 0`` and 0 tokens/s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from archscale.arch import Architecture, non_embedding_params
from archscale.cost.gpus import GPU
from archscale.errors import UserError

GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default share of device memory it may use."""
FIXED_OVERHEAD_BYTES_PER_GPU = 1.0e9
"""CUDA context, CUDA graphs and allocator slack outside the weights and KV cache."""
PREFILL_CHUNK_TOKENS = 8192
"""Tokens in the activation-profiling pass (vLLM's default ``max_num_batched_tokens`` order)."""
LOGIT_BYTES = 4
"""Logits are kept in fp32."""


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
class Efficiency:
    """Achieved fractions of peak compute and bandwidth.

    Defaults are llm-analysis's (0.7 / 0.9); ``bench calibrate`` can fit them
    to measured throughput.
    """

    compute: float = 0.7
    memory: float = 0.9

    def __post_init__(self) -> None:
        for field_name in ("compute", "memory"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise UserError(f"efficiency {field_name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class ThroughputEstimate:
    """What :func:`estimate_throughput` predicts for one architecture.

    ``total_tokens_per_s`` counts prompt and generated tokens, as vLLM's
    throughput benchmark reports; ``prefill_s``/``decode_s`` are summed over
    waves; ``concurrency`` is how many sequences run at once (``batch_size``
    when ``fits``); ``bound`` is the resource that dominates decode time.
    """

    total_tokens_per_s: float
    output_tokens_per_s: float
    prefill_s: float
    decode_s: float
    memory_gb_needed: float
    fits: bool
    bound: str
    concurrency: int

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_throughput(
    arch: Architecture,
    gpu: GPU,
    workload: Workload,
    tp: int = 1,
    efficiency: Efficiency = Efficiency(),
    bytes_per_element: int = 2,
    t_sync_s: float = 5e-6,
) -> ThroughputEstimate:
    """Roofline throughput of one architecture (the vectorised model on a one-row frame)."""
    frame = pd.DataFrame([arch.shape_columns()])
    row = estimate_throughput_many(frame, gpu, workload, tp, efficiency, bytes_per_element, t_sync_s).iloc[0]
    return ThroughputEstimate(
        total_tokens_per_s=float(row["tokens_per_s"]),
        output_tokens_per_s=float(row["output_tokens_per_s"]),
        prefill_s=float(row["prefill_s"]),
        decode_s=float(row["decode_s"]),
        memory_gb_needed=float(row["memory_gb"]),
        fits=bool(row["fits"]),
        bound=str(row["bound"]),
        concurrency=int(row["concurrency"]),
    )


def estimate_throughput_many(
    candidates: pd.DataFrame,
    gpu: GPU,
    workload: Workload,
    tp: int = 1,
    efficiency: Efficiency = Efficiency(),
    bytes_per_element: int = 2,
    t_sync_s: float = 5e-6,
) -> pd.DataFrame:
    """Roofline throughput for every row of a candidate table, with numpy over rows.

    ``candidates`` needs ``n_layers, d_model, n_heads, n_kv_heads, d_head,
    d_ff`` and ``vocab`` (or ``vocab_size``); ``tie_embeddings`` is optional
    (default untied). Returns a frame on the same index with columns
    ``tokens_per_s, output_tokens_per_s, prefill_s, decode_s, memory_gb,
    fits, bound, concurrency``.
    """
    _check_run_arguments(tp, bytes_per_element, t_sync_s)
    shape = _shape_arrays(candidates)
    cost = _per_token_costs(shape, bytes_per_element)
    memory = _memory(cost, gpu, workload, tp, bytes_per_element)
    concurrency = memory["concurrency"]
    batch = workload.batch_size
    full_waves, remainder = np.divmod(batch, np.maximum(concurrency, 1))
    phases = _batch_times(cost, concurrency, gpu, workload, tp, efficiency, t_sync_s)
    prefill, decode = full_waves * phases["prefill"], full_waves * phases["decode"]
    if remainder.any():  # a last, smaller wave where the KV cache capped concurrency
        rest = _batch_times(cost, remainder, gpu, workload, tp, efficiency, t_sync_s)
        prefill, decode = prefill + rest["prefill"], decode + rest["decode"]
    total = prefill + decode
    runs = concurrency >= 1
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(runs, batch * (workload.input_len + workload.output_len) / total, 0.0)
        output = np.where(runs, batch * workload.output_len / total, 0.0)
    return pd.DataFrame({
        "tokens_per_s": tokens,
        "output_tokens_per_s": output,
        "prefill_s": np.where(runs, prefill, np.inf),
        "decode_s": np.where(runs, decode, np.inf),
        "memory_gb": memory["needed"] / 1e9,
        "fits": memory["fits"],
        "bound": _decode_bound(cost, concurrency, gpu, workload, tp, efficiency),
        "concurrency": concurrency,
    }, index=candidates.index)


# ---- pieces ----------------------------------------------------------------------
def _check_run_arguments(tp, bytes_per_element, t_sync_s) -> None:
    if not isinstance(tp, (int, np.integer)) or isinstance(tp, bool) or tp < 1:
        raise UserError(f"tp must be a positive integer, got {tp!r}")
    if not isinstance(bytes_per_element, (int, float)) or bytes_per_element <= 0:
        raise UserError(f"bytes per element must be positive, got {bytes_per_element!r}")
    if not (isinstance(t_sync_s, (int, float)) and math.isfinite(t_sync_s) and t_sync_s >= 0):
        raise UserError(f"t_sync must be a non-negative number of seconds, got {t_sync_s!r}")


def _shape_arrays(candidates: pd.DataFrame) -> dict[str, np.ndarray]:
    """Pull the shape columns out as float64 arrays (int64 for the exact parameter count)."""
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


def _per_token_costs(shape: dict, bytes_per_element: float) -> dict[str, np.ndarray]:
    """The per-token and per-pass quantities both phases share."""
    lm_head = shape["vocab"] * shape["d_model"]
    embedding_tables = np.where(shape["tied"], 1.0, 2.0)
    return {
        "n_layers": shape["n_layers"],
        "flops_fixed": 2.0 * shape["n_non_embed"],                     # 2N per token
        "flops_per_context": 2.0 * shape["n_layers"] * shape["n_heads"] * shape["d_head"],  # 2 L d_q per cached token
        "flops_lm_head": 2.0 * lm_head,
        "weight_read_bytes": (shape["n_non_embed"] + lm_head) * bytes_per_element,
        "weight_bytes": (shape["n_non_embed"] + embedding_tables * lm_head) * bytes_per_element,
        "kv_bytes": 2.0 * shape["n_layers"] * shape["n_kv_heads"] * shape["d_head"] * bytes_per_element,
        "activation_width": (shape["d_model"] + shape["n_heads"] * shape["d_head"]
                             + 2.0 * shape["n_kv_heads"] * shape["d_head"] + 3.0 * shape["d_ff"]),
        "vocab": shape["vocab"],
    }


def _memory(cost, gpu: GPU, workload: Workload, tp: int, bytes_per_element: float) -> dict[str, np.ndarray]:
    """Memory needed for the whole batch, whether it fits, and how many sequences can run at once."""
    tokens_per_sequence = workload.input_len + workload.output_len
    overhead = (tp * FIXED_OVERHEAD_BYTES_PER_GPU
                + PREFILL_CHUNK_TOKENS * cost["activation_width"] * bytes_per_element
                + workload.batch_size * cost["vocab"] * LOGIT_BYTES)
    kv_per_sequence = tokens_per_sequence * cost["kv_bytes"]
    needed = cost["weight_bytes"] + workload.batch_size * kv_per_sequence + overhead
    budget = tp * gpu.memory_bytes * GPU_MEMORY_UTILIZATION
    kv_room = budget - cost["weight_bytes"] - overhead
    max_sequences = np.floor(np.maximum(kv_room, 0.0) / kv_per_sequence).astype(np.int64)
    return {
        "needed": needed,
        "fits": needed <= budget,
        "concurrency": np.minimum(max_sequences, workload.batch_size),
    }


def _rates(gpu: GPU, tp: int, efficiency: Efficiency) -> tuple[float, float]:
    """Achievable FLOP/s and byte/s across ``tp`` GPUs (tensor parallel splits both evenly)."""
    return gpu.flops_per_s * efficiency.compute * tp, gpu.bytes_per_s * efficiency.memory * tp


def _decode_lines(cost, c, gpu: GPU, tp: int, efficiency: Efficiency):
    """Seconds of decode step ``s`` as two lines: compute ``a_c + b_c s`` and memory ``a_m + b_m s``."""
    flops_rate, bytes_rate = _rates(gpu, tp, efficiency)
    a_c = c * (cost["flops_fixed"] + cost["flops_lm_head"]) / flops_rate
    b_c = c * cost["flops_per_context"] / flops_rate
    a_m = cost["weight_read_bytes"] / bytes_rate
    b_m = c * cost["kv_bytes"] / bytes_rate
    return a_c, b_c, a_m, b_m


def _batch_times(cost, concurrency, gpu: GPU, workload: Workload, tp: int, efficiency: Efficiency,
                 t_sync_s: float) -> dict[str, np.ndarray]:
    """Prefill and decode seconds for ``concurrency`` sequences run together (0 sequences take 0 s)."""
    c = np.asarray(concurrency, dtype=np.float64)
    flops_rate, bytes_rate = _rates(gpu, tp, efficiency)
    sync = 2.0 * cost["n_layers"] * t_sync_s if tp > 1 else np.zeros_like(cost["n_layers"])
    prefill = _prefill_seconds(cost, c, workload.input_len, flops_rate, bytes_rate) + sync
    steps = workload.output_len
    decode = _sum_max_affine(*_decode_lines(cost, c, gpu, tp, efficiency), workload.input_len, steps) + steps * sync
    active = c > 0
    return {"prefill": np.where(active, prefill, 0.0), "decode": np.where(active, decode, 0.0)}


def _decode_bound(cost, concurrency, gpu: GPU, workload: Workload, tp: int, efficiency: Efficiency) -> pd.Categorical:
    """Which resource dominates decode time summed over steps, "memory" or "compute" (a categorical: cheap at 10^6 rows)."""
    a_c, b_c, a_m, b_m = _decode_lines(cost, np.asarray(concurrency, dtype=np.float64), gpu, tp, efficiency)
    compute = _sum_affine(a_c, b_c, workload.input_len, workload.output_len)
    memory = _sum_affine(a_m, b_m, workload.input_len, workload.output_len)
    return pd.Categorical.from_codes((memory >= compute).astype(np.int8), categories=["compute", "memory"])


def _prefill_seconds(cost, c, input_len: int, flops_rate: float, bytes_rate: float) -> np.ndarray:
    """One pass over all prompts: ``sum_{p<I} flops_per_token(p)`` in closed form, LM head on the last token."""
    flops = c * (input_len * cost["flops_fixed"]
                 + cost["flops_per_context"] * input_len * (input_len - 1) / 2.0
                 + cost["flops_lm_head"])
    traffic = cost["weight_read_bytes"] + c * input_len * cost["kv_bytes"]
    return np.maximum(flops / flops_rate, traffic / bytes_rate)


def _sum_affine(a, b, first, count):
    """``sum_{s=first}^{first+count-1} (a + b s)``; zero when ``count <= 0``."""
    count = np.maximum(count, 0)
    last = first + count - 1
    return count * a + b * (first + last) * count / 2.0


def _sum_max_affine(a1, b1, a2, b2, first: int, count: int) -> np.ndarray:
    """Exact ``sum_{s=first}^{first+count-1} max(a1 + b1 s, a2 + b2 s)``, elementwise over arrays.

    The difference of two affine functions changes sign at most once, so line
    1 wins on a prefix or a suffix of the range; find its length, then add two
    arithmetic series.
    """
    a1, b1, a2, b2 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a1, b1, a2, b2)))
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
    total = (_sum_affine(a1, b1, line1_first, line1_count)
             + _sum_affine(a2, b2, line2_first, count - line1_count))
    return total
