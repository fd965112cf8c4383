"""Stage: measure. Benchmark architectures: measured (torch, vLLM) and estimated (roofline) throughput in one store.

In: config folders or presets, and how to measure (:class:`BenchOptions`). Out: rows in an SQLite store
(:mod:`.store`), and from them a calibrated serving profile (:mod:`.calibrate`, written for
:mod:`archscale.serving.profiles`). The backends meet the sweep only through :mod:`.types`.

Library entry points (all importable from here; loaded on first use so that
``import archscale.bench`` and the vLLM worker start without torch or scipy):

* :func:`resolve_targets`, :class:`BenchOptions`, :func:`run_sweep`: the sweep
  ``archscale bench`` runs.
* :func:`append`, :func:`load_results`, :func:`export_csv`: the SQLite results
  store (``load_results`` also reads CSV exports).
* :class:`Calibration`, :func:`estimate_ratio`; the fit itself is
  :func:`archscale.bench.calibrate.calibrate` (the submodule's name would
  shadow a package-level function of the same name).
* :data:`COLUMNS`: the record columns, in order.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "COLUMNS": "archscale.bench.records",
    "config_hash": "archscale.bench.records",
    "gpu_key_for_device": "archscale.bench.records",
    "append": "archscale.bench.store",
    "load_results": "archscale.bench.store",
    "export_csv": "archscale.bench.store",
    "BenchOptions": "archscale.bench.types",
    "Hooks": "archscale.bench.sweep",
    "SweepResult": "archscale.bench.sweep",
    "Target": "archscale.bench.types",
    "resolve_targets": "archscale.bench.sweep",
    "run_sweep": "archscale.bench.sweep",
    "make_backend": "archscale.bench.sweep",
    "Calibration": "archscale.bench.calibrate",
    "estimate_ratio": "archscale.bench.calibrate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'archscale.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
