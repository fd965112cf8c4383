"""Describe this machine's CPU as the serving model sees a device: achieved matmul FLOP/s and copy bandwidth.

Why: the GPU table holds datasheet peaks, but a CPU has no datasheet figure
that means the same thing (it depends on cores, threads, vector units and
dtype). A calibration profile for a CPU (vLLM's CPU backend, or archscale's
torch backend) is fitted relative to a reference peak, and the fastest this
machine actually does a large matrix product and a large copy, with the
threads a measurement will use, is the natural one: fitted efficiencies are
then fractions of what the hardware demonstrably reaches. The result is a
device entry (the fields of :class:`~archscale.cost.gpus.GPU`) that
``--gpu-file`` reads; the profile stores it, so it is never applied to
another machine silently.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from archscale.cost.gpus import GPU

MATMUL_SIZE = 1024
COPY_BYTES = 128 * 2**20


def _best_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    """Fastest of a few runs after a warm-up: the achievable rate, not an average under noise."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def probe_cpu(name: str = "cpu", threads: int | None = None, dtype: str = "float32") -> GPU:
    """Measure this CPU: ``dtype`` matmul FLOP/s and copy bandwidth with ``threads`` torch threads; memory = RAM."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        kind = getattr(torch, dtype)
        a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(kind)
        b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(kind)
        flops = 2 * MATMUL_SIZE**3 / _best_seconds(lambda: a @ b)
        source = torch.empty(COPY_BYTES // 4)
        target = torch.empty_like(source)
        bandwidth = 2 * COPY_BYTES / _best_seconds(lambda: target.copy_(source))
    finally:
        torch.set_num_threads(previous)
    memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return GPU(name.lower(), bf16_tflops=flops / 1e12, hbm_tb_s=bandwidth / 1e12, memory_gb=round(memory_gib, 1),
               interconnect_gb_s=1.0)
