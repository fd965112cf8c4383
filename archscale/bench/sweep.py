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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from archscale.shapes.architecture import Architecture
from archscale.bench.records import make_record
from archscale.bench.types import Backend, BenchOptions, Target, Tick
from archscale.serving.estimate import check_tensor_parallel, require_serving_costed
from archscale.io.errors import UserError, keep_hint
from archscale.shapes.hf_config import load_architecture, write_hf_config


def check_targets(targets: Sequence[Target], options: "BenchOptions") -> None:
    """Refuse, before anything is measured, a shape the tensor-parallel degree cannot split, or one the backend would
    run or cost as another model: latent attention and sliding windows everywhere (the serving model costs them as
    a dense full-attention Llama, so vLLM rows of them could not be calibrated or compared), and experts on torch:
    the bundled model trains Mixtral-style experts, but its measured decode path (frozen CPU kernels, a per-expert
    gather) is not a serving engine's, and nothing has checked its MoE timings. vLLM measures MoE configs and the
    serving model costs them."""
    for target in targets:
        if options.backend == "torch" and target.arch.is_moe:
            raise UserError(f"{target.label}: --backend torch does not measure Mixture-of-Experts shapes "
                            f"(n_experts {target.arch.n_experts}): its decode path is the bundled dense model's; "
                            "measure it with --backend vllm or estimate it with --backend roofline")
        require_serving_costed(target.arch.shape_columns(), target.label)
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
    return write_hf_config(arch)  # a preset


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
                    with keep_hint(_kept(len(result.records), store_path)):
                        append(store_path, [record])
                result.records.append(record)
                hooks.recorded(record)
    except KeyboardInterrupt:
        result.interrupted = True
    return result


def _kept(done: int, store: Path) -> str:
    """What a failed append leaves: the records stored before it, or none (a new store is not left behind)."""
    if not done:
        return f"no record was stored in {store}; free space or fix the folder, then run it again"
    return (f"{done} record{'s' if done != 1 else ''} measured before this one {'are' if done != 1 else 'is'} kept "
            f"in {store}; free space or fix the folder, then rerun for the rest")


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
