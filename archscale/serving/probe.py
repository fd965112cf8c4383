"""Describe this machine's CPU as the serving model sees a device: peak FLOP/s and memory bandwidth.

Why: the GPU table holds datasheet peaks, but a CPU has no datasheet figure
that means the same thing (it depends on cores, threads, vector units and
dtype). A calibration profile for a CPU (vLLM's CPU backend, or archscale's
torch backend) is fitted relative to reference rates, so they should be the
CPU's own ceilings: the peak FLOP/s its vector units allow at its clock with
the threads a measurement uses (from ``/proc/cpuinfo``: AVX-512, AVX2 with
FMA, or SSE), which no load on a shared machine can lower, or the rate a
large torch matmul reaches if that is higher (boost clocks), and the fastest
large copy it manages. The result is a device entry (the fields of
:class:`~archscale.serving.devices.GPU`) that ``--gpu-file`` reads; the profile
stores it, so it is never applied to another machine silently. The matmul
rate torch reaches is measured and reported beside the peak, as a check.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from archscale.serving.devices import GPU
from archscale.io.errors import UserError

MATMUL_SIZE = 1024
COPY_BYTES = 128 * 2**20
@dataclass(frozen=True)
class CpuProbe:
    """The device entry and how it was arrived at."""

    device: GPU
    flops_per_cycle: int
    mhz: float
    threads: int
    matmul_flops: float
    copy_bytes_per_s: float


def _best_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    """Fastest of a few runs after a warm-up: the achievable rate, not an average under noise."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[set[str], float]:
    """The first CPU's feature flags and clock (MHz)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the CPU description ({exc}); write a --gpu-file entry by hand") from None
    flags, mhz = set(), 0.0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and not mhz:
            mhz = float(value)
    if not flags or not mhz:
        raise UserError(f"{path}: no flags or clock found; write a --gpu-file entry by hand")
    return flags, mhz


def peak_flops_per_cycle(flags: set[str]) -> int:
    """fp32 FLOPs one core can issue per cycle: two fused multiply-add pipes of 16 (AVX-512) or 8 (AVX2) lanes,
    or, without FMA, one add and one multiply pipe of 8 (AVX) or 4 (SSE) lanes."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    return 16 if "avx" in flags else 8


def probe_cpu(name: str = "cpu", threads: int | None = None, dtype: str = "float32") -> CpuProbe:
    """Peak FLOP/s at ``threads`` cores, best copy bandwidth, torch's matmul rate in ``dtype``; memory = RAM."""
    import torch

    flags, mhz = _cpuinfo()
    threads = threads or torch.get_num_threads()
    per_cycle = peak_flops_per_cycle(flags)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kind = getattr(torch, dtype)
        a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(kind)
        b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(kind)
        matmul = 2 * MATMUL_SIZE**3 / _best_seconds(lambda: a @ b)
        source = torch.empty(COPY_BYTES // 4)
        target = torch.empty_like(source)
        copy = 2 * COPY_BYTES / _best_seconds(lambda: target.copy_(source))
    finally:
        torch.set_num_threads(previous)
    # /proc/cpuinfo gives the clock the kernel saw (often the base clock on a virtual machine); boost clocks make a
    # core faster, so when torch demonstrably does better, that rate is the peak (efficiencies stay <= 1)
    peak = max(per_cycle * mhz * 1e6 * threads, matmul)
    memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    device = GPU(name.lower(), bf16_tflops=peak / 1e12, hbm_tb_s=copy / 1e12, memory_gb=round(memory_gib, 1),
                 interconnect_gb_s=1.0)
    return CpuProbe(device=device, flops_per_cycle=per_cycle, mhz=mhz, threads=threads, matmul_flops=matmul,
                    copy_bytes_per_s=copy)
