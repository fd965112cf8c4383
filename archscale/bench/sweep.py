"""The benchmark sweep: configs x batch sizes through one backend, each record stored as it lands.

Everything a user can get wrong (a missing config.json, an unknown preset, a
backend that cannot run here) is checked by :func:`resolve_targets` and by
constructing the backend, *before* anything is measured or written. During
the sweep a failure of one (config, batch size) is a record with status
``failed`` and the sweep goes on; Ctrl-C stops it and keeps every record
already appended.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from archscale.arch import Architecture, load_architecture
from archscale.bench.records import BACKENDS, NOISY_CV, canonical_dtype, make_record
from archscale.cost.serving import check_tensor_parallel
from archscale.errors import UserError, keep_hint


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


def check_targets(targets: Sequence[Target], options: "BenchOptions") -> None:
    """Refuse, before anything is measured, a shape the tensor-parallel degree cannot split."""
    for target in targets:
        check_tensor_parallel(target.arch.n_heads, target.arch.n_kv_heads, options.tp, target.label)


def resolve_targets(specs: Sequence[str]) -> list[Target]:
    """Config directories, config.json paths or preset names to targets (UserError on the first bad one)."""
    if not specs:
        raise UserError("give at least one config directory, config.json or preset name to benchmark")
    targets = []
    for spec in specs:
        arch = load_architecture(spec)
        targets.append(Target(spec=spec, arch=arch, hf_config=_hf_config(spec, arch)))
    return targets


def _hf_config(spec: str, arch: Architecture) -> dict:
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))  # load_architecture has already parsed it
    return arch.to_hf_config()  # a preset


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
    input_len: int = 128
    output_len: int = 64
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
        if self.dtype is not None and canonical_dtype(self.dtype) is None:
            raise UserError(f"unknown --dtype {self.dtype!r}: use bf16, fp16 or float32")
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


def make_backend(options: BenchOptions) -> Backend:
    """Construct (and so check) the backend named in ``options``; raises UserError if it cannot run here."""
    if options.backend == "torch":
        from archscale.bench.torch_backend import TorchBackend

        return TorchBackend(options)
    if options.backend == "vllm":
        from archscale.bench.vllm_backend import VllmBackend

        return VllmBackend(options)
    from archscale.bench.roofline_backend import RooflineBackend

    return RooflineBackend(options)


@dataclass
class SweepResult:
    """Records produced (in order), whether Ctrl-C cut the sweep short, and where they were stored."""

    records: list[dict[str, Any]]
    interrupted: bool = False
    store: Path | None = None

    @property
    def n_failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.records)

    @property
    def n_noisy(self) -> int:
        return sum(r["status"] == "noisy" for r in self.records)


@dataclass
class Hooks:
    """Callbacks for a progress display: a (config, batch) starts, repeats finish, a record lands."""

    started: Callable[[Target, int], None] = lambda target, batch: None
    advanced: Tick = lambda n, description=None: None
    recorded: Callable[[dict[str, Any]], None] = lambda record: None


def run_sweep(targets: Sequence[Target], options: BenchOptions, store: str | Path | None = None,
              hooks: Hooks | None = None, backend: Backend | None = None) -> SweepResult:
    """Benchmark every target at every batch size; append each record to ``store`` as soon as it exists.

    A KeyboardInterrupt ends the sweep with ``interrupted=True``; what was
    appended stays appended (and is in ``records``).
    """
    from archscale.bench.store import append, check_store

    hooks = hooks or Hooks()
    store_path = check_store(store) if store is not None else None
    check_targets(targets, options)
    backend = backend or make_backend(options)
    result = SweepResult(records=[], store=store_path)
    workload = {"input_len": options.input_len, "output_len": options.output_len, "tp": options.tp,
                "repeats": None if options.backend == "roofline" else options.repeats}
    try:
        for target in targets:
            for batch_size, measured in _announced(backend.run(target, hooks.advanced), target, options, hooks):
                record = make_record(target.arch, target.spec, backend.name, {**workload, "batch_size": batch_size}, measured,
                                     options.max_noise)
                if store_path is not None:
                    done = len(result.records)
                    with keep_hint(f"{done} record{'s' if done != 1 else ''} measured before this one "
                                   f"{'are' if done != 1 else 'is'} kept in {store_path}; free space or fix the folder, "
                                   "then rerun for the rest"):
                        append(store_path, [record])
                result.records.append(record)
                hooks.recorded(record)
    except KeyboardInterrupt:
        result.interrupted = True
    return result


def _announced(rows: Iterator[tuple[int, dict]], target: Target, options: BenchOptions,
               hooks: Hooks) -> Iterator[tuple[int, dict]]:
    """Tell the hooks which (config, batch) is next before the backend starts measuring it."""
    sizes = list(options.batch_sizes)
    if sizes:
        hooks.started(target, sizes[0])
    for index, row in enumerate(rows):
        yield row
        if index + 1 < len(sizes):
            hooks.started(target, sizes[index + 1])
