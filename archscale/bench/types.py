"""The seam between the sweep and its backends: what to measure (:class:`Target`), how (:class:`BenchOptions`),
and what a backend is (:class:`Backend`).

The sweep (:mod:`archscale.bench.sweep`) constructs backends and feeds them targets; each backend
(:mod:`~archscale.bench.torch_backend`, :mod:`~archscale.bench.vllm_backend`,
:mod:`~archscale.bench.roofline_backend`) reads these types and nothing of the sweep. A new backend implements
:class:`Backend` and is named in :data:`archscale.bench.records.BACKENDS` and in
:func:`archscale.bench.sweep.make_backend`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from archscale.bench.records import BACKENDS, NOISY_CV
from archscale.io.errors import UserError
from archscale.io.units import parse_dtype
from archscale.serving.profiles import check_engine
from archscale.shapes.architecture import Architecture


@dataclass(frozen=True)
class Target:
    """One thing to benchmark: the spec the user typed, its shape, and the HF config vLLM gets.

    ``hf_config`` is the config.json as written (a preset's is generated), so
    vLLM sees the user's file rather than archscale's reading of it.
    """

    spec: str
    arch: Architecture
    hf_config: dict

    @property
    def label(self) -> str:
        return self.arch.name or self.spec


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how; shared by every backend (each reads the fields it needs).

    ``gpu`` is the archscale GPU key recorded with each row (required by the
    roofline backend; for measured backends it overrides the key derived from
    the device name). ``dtype`` None means the backend's default (bf16 on CUDA,
    float32 for the torch backend on CPU). ``threads`` is the number of CPU
    threads a measurement computes with (None: the backend's default); it is
    recorded in every row. ``profile`` and ``engine`` are for
    the roofline backend: which calibration profile to estimate with (a path,
    a name, ``none``, or None for the one matching ``engine``, device, dtype).
    """

    backend: str = "torch"
    batch_sizes: tuple[int, ...] = (1,)
    input_len: int = 4096
    output_len: int = 1024
    repeats: int = 3
    gpu: str | None = None
    gpu_file: Path | None = None
    dtype: str | None = None
    device: str = "auto"
    tp: int = 1
    compile: bool = False
    threads: int | None = None
    enforce_eager: bool = False
    profile: str | None = None
    engine: str = "vllm"
    seed: int = 0
    worker_timeout_s: float = 3600.0
    verbose: bool = False
    vllm_python: Path | None = None
    max_noise: float = NOISY_CV

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}: choose {', '.join(BACKENDS)}")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UserError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        for name in ("input_len", "output_len", "repeats", "tp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.threads is not None and self.backend != "torch":
            raise UserError("--threads sets the torch backend's CPU threads; vLLM on CPU takes its threads and cores from "
                            "VLLM_CPU_OMP_THREADS_BIND (e.g. 0-1), and the roofline computes nothing")
        parse_dtype(self.dtype)
        check_engine(self.engine)
        if self.worker_timeout_s <= 0:
            raise UserError(f"--timeout must be positive, got {self.worker_timeout_s}")
        if not 0 < self.max_noise < math.inf:
            raise UserError(f"--max-noise must be a positive fraction of the mean (e.g. 0.2 for 20%), got {self.max_noise}")

    @property
    def progress_units_per_batch(self) -> int:
        """Timed repeats per (config, batch size); the roofline has one estimate."""
        return 1 if self.backend == "roofline" else self.repeats

    @property
    def progress_units_per_target(self) -> int:
        """Steps per config before its batch sizes: vLLM's engine start-up (tens of seconds) is one."""
        return 1 if self.backend == "vllm" else 0


class Tick(Protocol):
    """``tick(n)``: n progress units done; ``tick(n, description)`` also says what is running now."""

    def __call__(self, n: int, description: str | None = None) -> None: ...


class Backend(Protocol):
    """A constructed backend has passed its checks; ``run`` yields ``(batch_size, measured fields)``."""

    name: str

    def run(self, target: Target, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]: ...
