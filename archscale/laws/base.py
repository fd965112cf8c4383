"""What every scaling law looks like to the fitter and to later verbs.

A law is a small object with a name, the runs-table columns it reads, its
parameters (each with bounds, a starting grid and whether it must stay
positive) and a vectorised ``predict``. Laws are fitted on *normalised*
inputs (``N / N0``, ``D / D0``, ...) so that every parameter is of order one;
``scales`` picks the normalisers from the data and ``unscale`` maps fitted
parameters back to natural units, so the JSON and every prediction use the
units a reader expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

Params = Mapping[str, float]
Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Param:
    """One fitted parameter.

    ``positive`` parameters are fitted as their logarithm (they cannot cross
    zero, and their scale is learned multiplicatively); ``grid`` holds the
    starting values tried by the multi-start, in normalised units.
    """

    name: str
    grid: tuple[float, ...]
    positive: bool = False
    min: float = -np.inf
    max: float = np.inf

    @property
    def span(self) -> str:
        """The values the fitter may give it, as an interval: ``(0, 3]`` for a positive one, ``[-1, 1]``."""
        if self.positive and self.min <= 0:
            return f"(0, {self.max:g}]"
        return f"[{max(self.min, 0.0) if self.positive else self.min:g}, {self.max:g}]"

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies in :attr:`span` (a positive parameter is fitted as its log, so never 0)."""
        if not math.isfinite(value) or value > self.max:
            return False
        if self.positive:
            return value > 0 and value >= self.min
        return value >= self.min


class Law:
    """Base class: subclasses set ``name``, ``columns``, ``params`` and implement ``predict``."""

    name: str = ""
    description: str = ""
    columns: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    # parameters held at a value unless the user says otherwise (a gauge, say)
    default_fixed: Mapping[str, float] = {}
    # the objectives form selection tries for this law (``--loss`` can still name any other)
    selection_objectives: tuple[str, ...] = ("lsq", "huber")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        raise NotImplementedError

    def scales(self, data: Columns) -> dict[str, float]:
        """Normalisers for the input columns (geometric means by default for power-law inputs)."""
        return {}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        """Map parameters fitted on normalised inputs back to natural units."""
        return dict(params)

    def collinear_inputs(self, data: Columns) -> str | None:
        """A sentence saying why the design cannot identify this law's parameters, or None."""
        return None

    def optimum(self, params: Params) -> dict[str, float]:
        """Closed-form optimum of the architecture factors, where the law has one."""
        return {}


def geometric_mean(values: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(values))))


def normalised(data: Columns, scales: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Divide each scaled column by its normaliser; other columns pass through."""
    return {key: (np.asarray(value, float) / scales[key] if key in scales else np.asarray(value, float))
            for key, value in data.items()}


def columns_of(frame: pd.DataFrame | Columns, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {name: np.asarray(frame[name], dtype=float) for name in names}


def n_and_d_collinear(data: Columns) -> str | None:
    """N and D move together (one tokens-per-parameter ratio): A and B are not identifiable."""
    log_n, log_d = np.log(data["N"]), np.log(data["D"])
    if np.ptp(log_n) == 0 or np.ptp(log_d) == 0:
        which = "N" if np.ptp(log_n) == 0 else "D"
        return f"every run has the same {which}, so its term cannot be told apart from E"
    ratio = log_d - log_n
    if np.ptp(ratio) < 0.05:  # all runs within 5% of one D/N
        return (f"every run uses the same tokens-per-parameter ratio (D/N = {np.exp(np.median(ratio)):.3g}): "
                "N and D are collinear, so A/N^alpha and B/D^beta cannot be separated; add runs at other D/N")
    return None
