"""A fake ``vllm`` for testing archscale's vLLM worker without vLLM or a GPU.

It implements the surface the worker uses (``LLM(**kwargs)`` with
``generate(prompts, sampling_params, use_tqdm=...)`` and ``collective_rpc``,
``SamplingParams``, ``vllm.platforms.current_platform``, ``__version__``)
and behaves as the real engine does where archscale depends on it:

* prompts must be token-id prompts with ids in ``[0, vocab_size)``, each no
  longer than ``max_model_len - max_tokens``; each gets ``max_tokens`` ids;
* at most ``max_num_seqs`` requests run at once (capped further by
  ``FAKE_VLLM_MAX_RUNNING``, as a KV cache too small would); the rest wait
  for a slot, so a batch larger than that runs in waves;
* ``RequestOutput.metrics`` carries engine timestamps (``queued_ts``,
  ``scheduled_ts``, ``first_token_ts``, ``last_token_ts``) and
  ``num_preemptions`` only when the engine logs stats
  (``disable_log_stats=False``), as vLLM's does: all requests are queued at
  once, request ``i`` gets its first token ``i + 1`` ms after it is scheduled,
  and its last 0.5 s after; with stats on, ``llm_engine.logger_manager.stat_loggers``
  is a list whose loggers get each step's ``inter_token_latencies_iter``, the
  gaps between a request's tokens growing step by step (gap k is k times gap 1)
  and summing to its decode span;
* ``collective_rpc(name)`` calls ``name`` on the ``worker_extension_cls``
  given to ``LLM`` (one rank per ``tensor_parallel_size``), in this process.

``FAKE_VLLM_DEVICE``: ``cpu`` (default) or ``cuda`` (reports an H100).
Every call is logged as one JSON line to ``FAKE_VLLM_LOG`` so a test can
assert the arguments received. ``FAKE_VLLM_MODE``: ``oom`` raises an
out-of-memory error from ``generate``; ``crash`` writes a traceback-like
line to stderr then kills the process; ``hang`` sleeps for an hour in
``generate``; ``hang_start`` in ``LLM()``; ``start_fail`` logs a root cause
as vLLM's engine process does and raises vLLM's generic wrapper error from
``LLM()``; ``short`` returns one token fewer than asked (so a test can tell
counted tokens from assumed ones). ``FAKE_VLLM_ONLY_HIDDEN=160`` applies the
mode only to configs with that ``hidden_size``, ``FAKE_VLLM_ONLY_BATCH=4``
only to ``generate`` calls of 4 prompts.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

__version__ = "0.0.0+fake"


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError (not imported: the fake stays light)."""


def _log(event: dict) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")


def _mode(config: dict, n_prompts: int | None = None) -> str:
    mode = os.environ.get("FAKE_VLLM_MODE", "")
    only_hidden = os.environ.get("FAKE_VLLM_ONLY_HIDDEN")
    only_batch = os.environ.get("FAKE_VLLM_ONLY_BATCH")
    if only_hidden and int(only_hidden) != int(config["hidden_size"]):
        return ""
    if only_batch and n_prompts is not None and int(only_batch) != n_prompts:
        return ""
    return mode


class SamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.max_tokens = kwargs.get("max_tokens", 16)


class _Completion:
    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids


class _Stats:
    def __init__(self, queued_ts: float, scheduled_ts: float, first_token_ts: float, last_token_ts: float) -> None:
        self.queued_ts = queued_ts
        self.scheduled_ts = scheduled_ts
        self.first_token_ts = first_token_ts
        self.last_token_ts = last_token_ts
        self.num_preemptions = 0


class _IterationStats:
    def __init__(self, gaps: list[float]) -> None:
        self.inter_token_latencies_iter = gaps


class _LoggerManager:
    def __init__(self) -> None:
        self.stat_loggers: list = []


class _Engine:
    def __init__(self, stats: bool) -> None:
        self.logger_manager = _LoggerManager() if stats else None


def _gaps(first: float, last: float, tokens: int) -> list[float]:
    """``tokens - 1`` gaps growing step by step (gap k is k times the first) that sum to ``last - first``."""
    steps = range(1, tokens)
    return [(last - first) * k / sum(steps) for k in steps]


class _RequestOutput:
    def __init__(self, prompt_token_ids: list[int], token_ids: list[int], metrics: _Stats | None) -> None:
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [_Completion(token_ids)]
        self.metrics = metrics


class LLM:
    def __init__(self, **kwargs) -> None:
        config_path = os.path.join(kwargs["model"], "config.json")
        with open(config_path, encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.kwargs = kwargs
        self.llm_engine = _Engine(stats=not kwargs.get("disable_log_stats", True))
        _log({"event": "init", "kwargs": kwargs, "config": self.config, "pid": os.getpid(), "env": {
            k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS")}})
        mode = _mode(self.config)
        if mode == "hang_start":
            time.sleep(3600)
        if mode == "start_fail":
            print("(EngineCore pid=1) INFO 11-25 02:54:12 [core.py:133] Initializing a V1 LLM engine", flush=True)
            print("(VllmWorker-0 pid=2) ERROR 11-25 02:54:25 [multiproc_executor.py:953] ValueError: Available memory "
                  "on node 0 (1.00/18.09 GiB) on startup is less than desired CPU memory utilization", flush=True)
            print("(EngineCore pid=1) INFO 11-25 02:54:27 [multiproc_executor.py:486] [shutdown] all workers exited",
                  flush=True)
            raise RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        module, _, name = (self.kwargs.get("worker_extension_cls") or "").rpartition(".")
        extension = getattr(importlib.import_module(module), name) if module else object
        worker = extension.__new__(extension)
        _log({"event": "collective_rpc", "method": method})
        return [getattr(worker, method)(*args, **(kwargs or {})) for _ in range(self.kwargs.get("tensor_parallel_size", 1))]

    def _report_gaps(self, outputs: list) -> None:
        """Each decode step's gaps to the stat loggers, as the engine reports them step by step."""
        if self.llm_engine.logger_manager is None:
            return
        per_request = [_gaps(o.metrics.first_token_ts, o.metrics.last_token_ts, len(o.outputs[0].token_ids))
                       for o in outputs]
        for step in range(max(map(len, per_request), default=0)):
            stats = _IterationStats([gaps[step] for gaps in per_request if step < len(gaps)])
            for logger in self.llm_engine.logger_manager.stat_loggers:
                logger.record(None, stats, mm_cache_stats=None, engine_idx=0)

    def generate(self, prompts, sampling_params, use_tqdm: bool = True):
        mode = _mode(self.config, len(prompts))
        if mode == "oom":
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if mode == "hang":
            time.sleep(3600)
        if mode == "crash":
            sys.stderr.write("Fatal Python error: Segmentation fault\n")
            sys.stderr.write("[rank0]: ProcessGroupNCCL destroyed without destroy_process_group\n")
            sys.stderr.flush()
            os._exit(139)
        vocab = int(self.config["vocab_size"])
        limit = self.kwargs["max_model_len"] - sampling_params.max_tokens
        slots = min(self.kwargs["max_num_seqs"], int(os.environ.get("FAKE_VLLM_MAX_RUNNING") or 1 << 30))
        stats = not self.kwargs.get("disable_log_stats", True)
        start = time.monotonic()
        outputs = []
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
                raise TypeError(f"expected a token-id prompt, got {type(prompt).__name__}")
            ids = prompt["prompt_token_ids"]
            if len(ids) > limit or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise ValueError("prompt too long or token id out of range")
            produced = sampling_params.max_tokens - (1 if mode == "short" else 0)
            wave = index // slots  # requests beyond the free slots wait for a whole earlier wave to finish
            scheduled = start + wave
            metrics = _Stats(start, scheduled, scheduled + 0.001 * (index + 1), scheduled + 0.5) if stats else None
            outputs.append(_RequestOutput(list(ids), [i % vocab for i in range(produced)], metrics))
        self._report_gaps(outputs)
        _log({"event": "generate", "n_prompts": len(prompts), "prompt_lengths": sorted({len(p["prompt_token_ids"]) for p in prompts}),
              "first_tokens": [p["prompt_token_ids"][0] for p in prompts], "sampling": sampling_params.kwargs,
              "use_tqdm": use_tqdm, "pid": os.getpid()})
        time.sleep(0.01)
        return outputs
