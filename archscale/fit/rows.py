"""Which runs a command uses, and which runs count as one size: ``--where``/``--holdout`` masks and size levels.

Both the selection of a law's form (:mod:`archscale.fit.selection`) and the study
(:mod:`archscale.fit.study`) group runs into size levels, and ``plan`` groups
budgets the same way, so the grouping lives below all three.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from archscale.io.errors import UserError

SIZE_TOLERANCE = 0.10  # runs within 10% of each other's N (or D) belong to one size level


def select(frame: pd.DataFrame, expression: str | None, flag: str, source: str | None = None) -> pd.Series:
    """Boolean mask of rows matching a pandas query expression (``--where``, ``--holdout``).

    With ``source`` (the file's name), a condition that matches no row is refused: a ``--where`` that keeps
    nothing, or a ``--holdout`` that would hold nothing out and so score nothing, is a typo far more often
    than an intent, and going on would print a result that silently answers another question.
    """
    if expression is not None and not expression.strip():
        raise UserError(f"{flag} is empty: give a condition such as \"N>=1e9\", or leave {flag} out")
    if expression is None:
        return pd.Series(False, index=frame.index) if flag == "--holdout" else pd.Series(True, index=frame.index)
    try:
        mask = frame.eval(expression)
    except Exception as exc:  # pandas raises many kinds for a bad expression
        raise UserError(f"{flag} {expression!r}: cannot evaluate on the runs table ({type(exc).__name__}: {exc}); "
                        f"columns are {', '.join(map(str, frame.columns))}") from None
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise UserError(f"{flag} {expression!r}: must be a true/false condition such as \"N>=1e9\"")
    if source is not None and not mask.any():
        raise UserError(f"{flag} {expression!r}: {'selects' if flag == '--where' else 'matches'} no rows of {source}; "
                        f"check the condition against the columns ({', '.join(map(str, frame.columns))})")
    return mask


def size_levels(values: np.ndarray, tolerance: float = SIZE_TOLERANCE) -> np.ndarray:
    """Label values into levels: sorted, a new level starts more than ``tolerance`` above the last level's start.

    Variants of one nominal size (80M models whose exact N differ by a few
    percent) share a level, as the paper groups them.
    """
    values = np.asarray(values, float)
    order = np.argsort(values)
    labels = np.empty(len(values), dtype=int)
    level, start = -1, -np.inf
    for index in order:
        if values[index] > start * (1 + tolerance):
            level, start = level + 1, values[index]
        labels[index] = level
    return labels


def empirical_best(frame: pd.DataFrame) -> np.ndarray:
    """Best measured loss among the runs of each (N level, D level): the paper's ``L_opt`` below 1B."""
    keys = pd.Series(list(zip(size_levels(frame["N"]), size_levels(frame["D"]))), index=frame.index)
    return frame["loss"].groupby(keys).transform("min").to_numpy(float)
