"""The torch backend: archscale's own model with random weights, prefill then greedy decode.

Why it exists: it runs anywhere (CPU included), needs no download and no
vLLM, and uses the one model definition (:class:`archscale.model.transformer.Transformer`)
that archscale trains, so a shape that benchmarks here is a shape that trains.
It is not a serving engine: no paged attention, no continuous batching, so
its numbers are a lower bound on what vLLM gets from the same shape.

Per (config, batch size): a KV cache for ``batch x (input_len + output_len)``
is preallocated; one warm-up pass (the full prefill and a few decode steps)
is excluded; each timed repeat prefills ``batch`` fresh random prompts
(logits for the last position only; in position chunks when the prefill's
activations would not fit the workspace), takes the first
output token from the prefill logits, then runs ``output_len - 1`` decode
steps, feeding back the greedy argmax, so every sequence produces
``output_len`` tokens, as vLLM with ``ignore_eos`` does. Time is taken with
``perf_counter`` after ``torch.cuda.synchronize()`` on CUDA.

Latency (:func:`archscale.bench.records.latency_fields`), from the same clock: the batch prefills together, so
every request's TTFT is the prefill's time (from the start of the repeat to its first tokens) and its TPOT
the decode time over ``output_len - 1``. The ITL gaps are the decode steps' times, each counted once per
request of the batch (every request gets one token a step). On CPU a step has finished when it returns, so
each is timed by ``perf_counter`` as it ends. On CUDA the loop synchronises only before and after the
decode: a synchronisation per step would stall the queue of launched kernels and slow the very tokens/s
measured, and without one a step's time is its launch time, not its work. So on CUDA the ITL percentiles
are None and the ITL mean is the decode time over ``output_len - 1`` (what the pooled gaps' mean is).

On CPU the model runs on its frozen inference weights (stacked projections,
each on the kernel that timed fastest for its shape; see
:mod:`archscale.model.frozen_linear`), with ``--threads`` intra-op threads (recorded
in every row). bf16 and fp16 run only on CPUs with native instructions for
them (AVX512-BF16 or AMX for bf16; AVX512-FP16 or AMX-FP16 for fp16):
elsewhere torch falls back to kernels several times slower than float32,
which would measure the fallback, not the shape. ``--compile`` compiles the
step with inductor (on CPU with its freezing, which packs the weights itself).

Before allocating, the bytes the run needs (weights, KV cache, prefill
workspace) are compared with what the device has free; a shape that does not
fit is a failed record, not a crash, and an out-of-memory error during the
run is caught and recorded the same way.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from archscale.shapes.architecture import Architecture
from archscale.bench.records import cpu_model_name, failed, gpu_key_for_device, latency_fields, summarize_repeats
from archscale.bench.types import BenchOptions, Target, Tick
from archscale.io.errors import UserError
from archscale.io.machine import available_bytes
from archscale.io.units import BYTES_PER_ELEMENT, parse_dtype
from archscale.model.memory import SLACK_BYTES, memory_needed, prefill_chunk, workspace_budget

WARMUP_DECODE_STEPS = 4


def resolve_device(name: str):
    """``auto`` -> CUDA when present, else CPU; an explicit ``cuda`` without CUDA is a UserError."""
    import torch

    key = name.strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(key)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}: use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: the torch backend runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


CPU_NATIVE = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}
"""x86 capabilities (as ``torch.cpu.get_capabilities()`` names them) that compute each half precision natively."""


def cpu_half_precision_problem(dtype: str, capabilities: dict[str, Any] | None = None) -> str | None:
    """Why ``dtype`` should not be benchmarked on this CPU, or None when it has native instructions for it.

    Without them torch's bf16/fp16 matmuls fall back to generic kernels
    (oneDNN refuses them below AVX512-BW/VL or AVX-NE-CONVERT), several times
    slower than float32: a row would measure the fallback, not the shape.
    """
    if dtype not in CPU_NATIVE:
        return None
    import torch

    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    wanted = CPU_NATIVE[dtype]
    if any(caps.get(flag) for flag in wanted):
        return None
    short = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
    cpu = str(caps.get("cpu_name") or platform.processor() or "this CPU")
    flags = " or ".join(flag.upper().replace("_", "-", 1) if flag.startswith("amx") else flag.upper() for flag in wanted)
    return (f"--dtype {short} on CPU needs {flags}, which this CPU ({cpu}) lacks: torch would run {short} matmuls in "
            f"fallback kernels several times slower than float32; use --dtype float32 (vLLM takes --dtype float32 too, "
            f"for rows in one dtype)")


def resolve_dtype(name: str | None, device) -> str:
    """bf16 on CUDA and float32 on CPU by default; half precision on CPU only where the CPU has native instructions."""
    if name is None:
        return "bfloat16" if device.type == "cuda" else "float32"
    dtype = parse_dtype(name)
    if device.type == "cpu":
        problem = cpu_half_precision_problem(dtype)
        if problem is not None:
            raise UserError(problem)
    return dtype


def resolve_threads(threads: int | None, device) -> int | None:
    """The intra-op thread count to measure with: ``--threads`` or torch's default on CPU; None on CUDA."""
    import torch

    if device.type != "cpu":
        if threads is not None:
            raise UserError("--threads sets CPU threads; it applies to --device cpu only")
        return None
    return threads if threads is not None else torch.get_num_threads()


def device_name(device) -> str:
    """The CUDA device name, or the CPU model name."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator's "can't allocate memory"."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# ---- the measurement ----------------------------------------------------------------
FROZEN_WEIGHT_COPIES = 3
"""Weights a CPU run holds: the parameters, their frozen stacked copy, and that copy packed for its kernel."""


def build_model(arch: Architecture, max_len: int, device, dtype_name: str, seed: int):
    """The model on ``device`` in ``dtype``, initialised there directly (no full-precision copy first)."""
    import torch

    from archscale.model.transformer import Transformer

    torch.manual_seed(seed)
    dtype = getattr(torch, dtype_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(arch, max_seq_len=max_len)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


@dataclass(frozen=True)
class Timing:
    """One timed prefill and decode of a batch: seconds of each, output tokens, and each decode step's seconds.

    ``step_s`` is None where the steps were not timed one by one (on CUDA: see the module docstring).
    """

    prefill_s: float
    decode_s: float
    tokens: int
    step_s: tuple[float, ...] | None = None


def generate(step: Callable, prompts, output_len: int, chunk: int, synchronize: Callable[[], None],
             time_steps: bool = False) -> Timing:
    """Prefill ``prompts`` (batch x input_len) then decode; the phases' seconds and the output tokens.

    The first output token comes from the prefill logits; ``output_len - 1``
    decode steps follow. Tokens are gathered on the device and counted after
    the clock stops, so counting costs no synchronisation. ``time_steps``
    reads the clock as each decode step returns, which times the step only
    where it has finished by then (a CPU).
    """
    import torch

    input_len = prompts.shape[1]
    synchronize()
    start = time.perf_counter()
    logits = None
    for position in range(0, input_len, chunk):
        logits = step(prompts[:, position:position + chunk], position, last_only=True)
    token = logits[:, -1].argmax(-1, keepdim=True)
    generated = [token]
    synchronize()
    prefilled = time.perf_counter()
    stepped = [prefilled]
    for position in range(input_len, input_len + output_len - 1):
        token = step(token, position)[:, -1].argmax(-1, keepdim=True)
        generated.append(token)
        if time_steps:
            stepped.append(time.perf_counter())
    synchronize()
    done = time.perf_counter()
    tokens = torch.cat(generated, dim=1)
    step_s = tuple(end - begin for begin, end in zip(stepped, stepped[1:])) if time_steps else None
    return Timing(prefilled - start, done - prefilled, int(tokens.numel()), step_s)


def batch_latencies(batch: int, output_len: int, timings: list[Timing]) -> dict[str, float | None]:
    """The latency columns of ``timings`` (repeats of one batch), each request of a batch counted once.

    Every request of a batch shares its prefill and its decode steps, so each repeat's TTFT, TPOT and step
    times stand for ``batch`` requests (and ITL gaps) alike.
    """
    gaps = output_len - 1
    ttft = [t.prefill_s for t in timings for _ in range(batch)]
    tpot = [t.decode_s / gaps for t in timings for _ in range(batch)] if gaps else None
    timed = gaps > 0 and all(t.step_s is not None for t in timings)
    itl = [s for t in timings for s in (t.step_s or ()) for _ in range(batch)] if timed else None
    itl_mean = sum(t.decode_s for t in timings) / (gaps * len(timings)) if gaps else None
    return latency_fields(ttft, tpot, itl, itl_mean_s=itl_mean)


@dataclass
class _Run:
    """State for one config: the model, its step function and the device facts recorded in every row."""

    model: Any
    step: Callable
    available: int | None
    fields: dict[str, Any]
    compiled: bool = False


class TorchBackend:
    """Measure configs with :class:`archscale.model.transformer.Transformer` on one CPU or CUDA device."""

    name = "torch"

    def __init__(self, options: BenchOptions) -> None:
        import torch

        if options.tp != 1:
            raise UserError("the torch backend runs on one device (--tp 1); use --backend vllm for tensor parallelism")
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype_name = resolve_dtype(options.dtype, self.device)
        self.threads = resolve_threads(options.threads, self.device)
        if options.compile:
            from archscale.model.transformer import compile_unavailable

            problem = compile_unavailable(self.device.type)
            if problem is not None:
                raise UserError(problem)
        self.element = BYTES_PER_ELEMENT[self.dtype_name]
        self.weight_copies = FROZEN_WEIGHT_COPIES if self.device.type == "cpu" and not options.compile else 1
        self._torch = torch

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def _free(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    def _device_fields(self) -> dict[str, Any]:
        name = device_name(self.device)
        gpu = self.options.gpu or ("cpu" if self.device.type == "cpu" else gpu_key_for_device(name))
        return {"gpu": gpu, "device_name": name, "dtype": self.dtype_name, "threads": self.threads,
                "torch_version": self._torch.__version__}

    def run(self, target: Target, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield one measured (or failed) row per batch size; the model is built once per config.

        On CPU torch's intra-op thread count is ``threads`` while this runs
        and is restored after.
        """
        options = self.options
        fields = self._device_fields()
        previous_threads = self._torch.get_num_threads()
        if self.threads is not None:
            self._torch.set_num_threads(self.threads)
        run, reason = self._build(target.arch, fields)
        try:
            for batch in options.batch_sizes:
                if run is None:
                    tick(options.repeats)
                    yield batch, failed(reason, **fields)
                else:
                    yield batch, self._measure(run, target.arch, batch, tick)
        finally:
            run = None  # the only reference to the model: drop it before giving the cache back
            self._free()
            self._torch.set_num_threads(previous_threads)

    def _build(self, arch: Architecture, fields: dict[str, Any]) -> tuple[_Run | None, str | None]:
        """The model and step function, or why there is none (does not fit, bad shape, out of memory)."""
        options = self.options
        available = available_bytes(self.device)
        reason = self._does_not_fit(arch, min(options.batch_sizes), available)
        if reason is not None:
            return None, reason
        try:
            model = build_model(arch, options.input_len + options.output_len, self.device, self.dtype_name, options.seed)
        except UserError as exc:
            return None, str(exc)
        except (RuntimeError, MemoryError) as exc:
            if not isinstance(exc, MemoryError) and not is_out_of_memory(exc):
                raise
            message = f"out of memory building the model: {exc}"
        else:
            return _Run(model, self._step(model), available, fields, compiled=options.compile), None
        self._free()
        return None, message

    def _step(self, model) -> Callable:
        """``model.forward_step``, compiled with dynamic shapes when ``--compile`` (on CPU with inductor's freezing)."""
        if not self.options.compile:
            return model.forward_step
        options = {"freezing": True} if self.device.type == "cpu" else None
        return self._torch.compile(model.forward_step, dynamic=True, options=options)

    def _does_not_fit(self, arch: Architecture, batch: int, available: int | None) -> str | None:
        """"needs X GB, device has Y GB free" when the estimate exceeds what the device has, else None."""
        if available is None:
            return None
        options = self.options
        chunk = self._chunk(arch, batch, available)
        needed = memory_needed(arch, batch, options.input_len, options.output_len, self.element, chunk,
                               self.weight_copies) + SLACK_BYTES
        if needed <= available:
            return None
        return f"needs {needed / 1e9:.1f} GB, device has {available / 1e9:.1f} GB free"

    def _chunk(self, arch: Architecture, batch: int, available: int | None) -> int:
        options = self.options
        budget = workspace_budget(arch, batch, options.input_len, options.output_len, self.element, available,
                                  self.weight_copies)
        return prefill_chunk(arch, batch, options.input_len, self.element, budget)

    def _measure(self, run: _Run, arch: Architecture, batch: int, tick: Tick) -> dict[str, Any]:
        """Warm up, then time ``repeats`` prefill+decode passes of ``batch`` fresh random prompts."""
        options, torch = self.options, self._torch
        # the model already holds its weights: compare the rest against what was free before it was built
        reason = self._does_not_fit(arch, batch, run.available)
        if reason is not None:
            tick(options.repeats)
            return failed(reason, **run.fields)
        chunk = self._chunk(arch, batch, run.available)
        generator = torch.Generator(self.device).manual_seed(options.seed + batch)
        done = 0
        timings: list[Timing] = []
        time_steps = self.device.type == "cpu"
        try:
            with torch.inference_mode():
                run.model.allocate_kv_cache(batch, options.input_len + options.output_len, freeze=not run.compiled)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                warmup = self._prompts(batch, arch, generator)
                generate(run.step, warmup, min(options.output_len, WARMUP_DECODE_STEPS + 1), chunk, self._synchronize)
                for _ in range(options.repeats):
                    prompts = self._prompts(batch, arch, generator)
                    timings.append(generate(run.step, prompts, options.output_len, chunk, self._synchronize, time_steps))
                    done += 1
                    tick(1)
        except (RuntimeError, MemoryError) as exc:
            if not isinstance(exc, MemoryError) and not is_out_of_memory(exc):
                raise
            tick(options.repeats - done)
            return failed(f"out of memory during the run: {exc}", **run.fields)
        finally:
            run.model.free_kv_cache()
            self._free()
        return self._summary(batch, timings, run.fields)

    def _prompts(self, batch: int, arch: Architecture, generator):
        return self._torch.randint(0, arch.vocab_size, (batch, self.options.input_len), device=self.device,
                                   generator=generator)

    def _summary(self, batch: int, timings: list[Timing], fields: dict[str, Any]) -> dict[str, Any]:
        options = self.options
        totals = [t.prefill_s + t.decode_s for t in timings]
        outputs = [t.tokens for t in timings]
        measured = summarize_repeats(totals, [batch * options.input_len + n for n in outputs], outputs)
        memory = (self._torch.cuda.max_memory_allocated(self.device) / 1e9) if self.device.type == "cuda" else None
        return {
            **fields,
            **measured,
            "prefill_s": sum(t.prefill_s for t in timings) / len(timings),
            "decode_s": sum(t.decode_s for t in timings) / len(timings),
            **batch_latencies(batch, options.output_len, timings),
            "output_tokens": round(sum(outputs) / len(outputs)),
            "memory_gb": memory,
            "status": "ok",
        }
