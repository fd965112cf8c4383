"""Fit the roofline's efficiencies to measured throughput on one GPU.

Why: the roofline (:mod:`archscale.cost.roofline`) gets directions right
from first principles, but its absolute tokens/s rest on two guesses, the
achieved fractions of peak compute and of peak bandwidth. Given measured rows
(torch or vLLM) for one GPU, :func:`calibrate` chooses
``Efficiency(compute, memory)`` in ``[0.05, 1]`` minimising
``sum_i log(estimate_i / measured_i)^2`` (relative error, symmetric in over-
and under-estimates) with :func:`scipy.optimize.least_squares` from a few
starting points (the time is a max of two terms, so a start in the wrong
regime can sit on a flat side). It reports every row's estimate and relative
error before and after, and whether each efficiency was identified at all:
if no measured row is ever compute-bound, the compute efficiency does not
move any estimate and the data cannot say what it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archscale.bench.records import BYTES_PER_ELEMENT, MEASURED_BACKENDS
from archscale.cost.gpus import GPU, load_gpu
from archscale.cost.roofline import Efficiency, Workload, estimate_throughput_many
from archscale.errors import UserError
from archscale.files import jsonable, read_json, write_json

BOUNDS = (0.05, 1.0)
STARTS = ((0.7, 0.9), (0.3, 0.3), (0.9, 0.1), (0.1, 0.9), (0.5, 0.5))
IDENTIFIED_SENSITIVITY = 0.02
"""Largest |d log estimate / d log efficiency| over rows below which an efficiency counts as not identified."""
ROW_COLUMNS = ["name", "backend", "dtype", "batch_size", "input_len", "output_len", "tp", "measured",
               "estimate_before", "estimate_after", "rel_err_before", "rel_err_after"]


@dataclass
class CalibrationResult:
    """Fitted efficiencies, the starting ones, and per-row estimates and errors before/after."""

    gpu: str
    efficiency: Efficiency
    initial: Efficiency
    rows: pd.DataFrame
    identified: dict[str, bool] = field(default_factory=dict)

    def _errors(self, column: str) -> tuple[float, float]:
        values = self.rows[column].abs()
        return float(values.max()), float(values.mean())

    @property
    def max_abs_rel_err_before(self) -> float:
        return self._errors("rel_err_before")[0]

    @property
    def mean_abs_rel_err_before(self) -> float:
        return self._errors("rel_err_before")[1]

    @property
    def max_abs_rel_err_after(self) -> float:
        return self._errors("rel_err_after")[0]

    @property
    def mean_abs_rel_err_after(self) -> float:
        return self._errors("rel_err_after")[1]

    @property
    def at_bound(self) -> dict[str, bool]:
        """Efficiencies the fit pushed to a bound: the roofline cannot match the data inside [0.05, 1]."""
        return {name: bool(min(abs(value - BOUNDS[0]), abs(value - BOUNDS[1])) < 1e-6)
                for name, value in (("compute", self.efficiency.compute), ("memory", self.efficiency.memory))}

    def to_dict(self) -> dict[str, Any]:
        """What ``--save`` writes: the efficiencies at top level (``--efficiency`` reads them) and the evidence."""
        return {
            "gpu": self.gpu,
            "compute": self.efficiency.compute,
            "memory": self.efficiency.memory,
            "initial": {"compute": self.initial.compute, "memory": self.initial.memory},
            "identified": self.identified,
            "at_bound": self.at_bound,
            "n_rows": len(self.rows),
            "max_abs_rel_err_before": self.max_abs_rel_err_before,
            "mean_abs_rel_err_before": self.mean_abs_rel_err_before,
            "max_abs_rel_err_after": self.max_abs_rel_err_after,
            "mean_abs_rel_err_after": self.mean_abs_rel_err_after,
            "rows": jsonable(self.rows.to_dict("records")),
        }


def measured_rows(results: pd.DataFrame, gpu: str, backend: str | None = None) -> pd.DataFrame:
    """Successful torch/vLLM rows for one GPU key (optionally one backend) with a positive tokens/s."""
    if results.empty:
        return results
    backends = [backend] if backend else list(MEASURED_BACKENDS)
    keep = (results["backend"].isin(backends) & (results["status"] == "ok")
            & (results["gpu"].astype(str).str.lower() == gpu.lower())
            & (pd.to_numeric(results["tokens_per_s"], errors="coerce") > 0))
    return results[keep].reset_index(drop=True)


def roofline_estimates(rows: pd.DataFrame, gpu: GPU, efficiency: Efficiency) -> np.ndarray:
    """The roofline's total tokens/s for every row, at each row's own workload, tp and dtype width."""
    estimates = np.full(len(rows), np.nan)
    element = rows["dtype"].map(lambda d: BYTES_PER_ELEMENT.get(str(d), 2)).to_numpy()
    tp = pd.to_numeric(rows["tp"], errors="coerce").fillna(1).astype(int).to_numpy()
    keys = pd.DataFrame({"b": rows["batch_size"].astype(int).to_numpy(), "i": rows["input_len"].astype(int).to_numpy(),
                         "o": rows["output_len"].astype(int).to_numpy(), "tp": tp, "e": element})
    shapes = rows[["n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab"]].astype("int64").copy()
    shapes["tie_embeddings"] = rows["tie_embeddings"].fillna(False).astype(bool).to_numpy()
    for (batch, input_len, output_len, n_gpus, width), index in keys.groupby(["b", "i", "o", "tp", "e"]).groups.items():
        positions = np.asarray(index)
        frame = estimate_throughput_many(shapes.iloc[positions].reset_index(drop=True), gpu,
                                         Workload(int(batch), int(input_len), int(output_len)), tp=int(n_gpus),
                                         efficiency=efficiency, bytes_per_element=int(width))
        estimates[positions] = frame["tokens_per_s"].to_numpy()
    return estimates


def _log_ratios(theta: np.ndarray, rows: pd.DataFrame, gpu: GPU, measured: np.ndarray) -> np.ndarray:
    estimates = roofline_estimates(rows, gpu, Efficiency(float(theta[0]), float(theta[1])))
    return np.log(np.maximum(estimates, 1e-30) / measured)


def _sensitivities(theta: np.ndarray, rows: pd.DataFrame, gpu: GPU, measured: np.ndarray) -> np.ndarray:
    """max over rows of |d log estimate / d log efficiency|, per efficiency (0: no row depends on it)."""
    base = _log_ratios(theta, rows, gpu, measured)
    result = []
    for k in range(2):
        step = np.array(theta, dtype=float)
        step[k] *= 0.97 if step[k] > BOUNDS[0] / 0.97 else 1.03
        result.append(float(np.max(np.abs(_log_ratios(step, rows, gpu, measured) - base)) / abs(math.log(step[k] / theta[k]))))
    return np.array(result)


def calibrate(results: pd.DataFrame, gpu: str | GPU, gpu_file: str | Path | None = None, backend: str | None = None,
              initial: Efficiency = Efficiency()) -> CalibrationResult:
    """Fit ``Efficiency(compute, memory)`` to the measured ok rows of ``results`` for ``gpu``.

    ``gpu`` is a GPU key (looked up with :func:`load_gpu`, ``gpu_file`` may
    add one) or a :class:`GPU`. Raises UserError with fewer than two rows to
    fit: two parameters from one number is not a fit.
    """
    from scipy.optimize import least_squares

    device = gpu if isinstance(gpu, GPU) else load_gpu(gpu, gpu_file)
    rows = measured_rows(results, device.name, backend)
    if len(rows) < 2:
        which = f"{backend} " if backend else "torch/vLLM "
        raise UserError(f"calibration needs at least 2 measured ok {which}rows for GPU {device.name!r}; found {len(rows)}")
    measured = rows["tokens_per_s"].astype(float).to_numpy()
    best = None
    for start in STARTS:
        fit = least_squares(_log_ratios, np.array(start), bounds=BOUNDS, args=(rows, device, measured),
                            x_scale=np.array([0.1, 0.1]), xtol=1e-12, ftol=1e-12, gtol=1e-12)
        if best is None or fit.cost < best.cost:
            best = fit
    fitted = Efficiency(float(np.clip(best.x[0], *BOUNDS)), float(np.clip(best.x[1], *BOUNDS)))
    sensitivity = _sensitivities(best.x, rows, device, measured)
    before = roofline_estimates(rows, device, initial)
    after = roofline_estimates(rows, device, fitted)
    table = rows[["name", "backend", "dtype", "batch_size", "input_len", "output_len", "tp"]].copy()
    table["measured"] = measured
    table["estimate_before"], table["estimate_after"] = before, after
    table["rel_err_before"], table["rel_err_after"] = before / measured - 1.0, after / measured - 1.0
    return CalibrationResult(gpu=device.name, efficiency=fitted, initial=initial, rows=table[ROW_COLUMNS],
                             identified={"compute": bool(sensitivity[0] >= IDENTIFIED_SENSITIVITY),
                                         "memory": bool(sensitivity[1] >= IDENTIFIED_SENSITIVITY)})


def save_calibration(result: CalibrationResult, path: str | Path) -> Path:
    write_json(path, result.to_dict())
    return Path(path)


def load_efficiency(path: str | Path) -> Efficiency:
    """Read ``{"compute": .., "memory": ..}`` (what ``bench calibrate --save`` writes) as an Efficiency."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such efficiency file (write one with `archscale bench calibrate --save`)")
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("efficiency"), dict):
        data = data["efficiency"]
    if not isinstance(data, dict) or "compute" not in data or "memory" not in data:
        raise UserError(f"{path}: expected an object with 'compute' and 'memory' efficiencies")
    try:
        return Efficiency(float(data["compute"]), float(data["memory"]))
    except (TypeError, ValueError):
        raise UserError(f"{path}: 'compute' and 'memory' must be numbers") from None


def roofline_fraction(results: pd.DataFrame, gpu_file: str | Path | None = None,
                      efficiency: Efficiency = Efficiency()) -> pd.Series:
    """measured / roofline tokens/s for every measured ok row on a GPU archscale knows; NaN elsewhere.

    What ``bench --show`` prints as "of roofline": how close a measurement
    came to the analytic estimate of the same shape, workload and GPU.
    """
    fraction = pd.Series(np.nan, index=results.index, dtype=float)
    if results.empty:
        return fraction
    ok = results["backend"].isin(MEASURED_BACKENDS) & (results["status"] == "ok") & (results["tokens_per_s"] > 0)
    for key in results.loc[ok, "gpu"].dropna().astype(str).unique():
        try:
            device = load_gpu(key, gpu_file)
        except UserError:
            continue
        rows = results[ok & (results["gpu"].astype(str) == key)]
        estimates = roofline_estimates(rows.reset_index(drop=True), device, efficiency)
        fraction.loc[rows.index] = rows["tokens_per_s"].to_numpy(dtype=float) / estimates
    return fraction
