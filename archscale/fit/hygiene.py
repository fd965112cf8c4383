"""Data hygiene: runs a fit should not see, and runs a fit should point at.

Two kinds of run distort a scaling-law fit on real data. Under-trained runs (the wings of isoFLOP profiles,
trained on fewer tokens than parameters) sit far above the frontier the law describes; a least-squares fit
bends towards them. They are dropped on request (``--min-tokens-per-param``), with a count. Runs the fitted
law misses by far more than the others (a mis-typed loss, a diverged run) are *flagged*, never dropped
silently: the user sees which file rows they are and decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from archscale.io.errors import UserError

OUTLIER_Z = 5.0  # robust z-score (MAD of log residuals) beyond which a run is flagged
MAD_TO_SD = 1.4826  # the MAD of a normal sample times this estimates its standard deviation
MAX_FLAGGED_SHOWN = 5


def drop_undertrained(frame: pd.DataFrame, min_tokens_per_param: float | None, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs with ``D / N`` below ``min_tokens_per_param`` removed; returns the rest and the runs that went."""
    if min_tokens_per_param is None or min_tokens_per_param == 0:  # 0: keep every run (and choose no floor)
        return frame, frame.iloc[:0]
    if not (np.isfinite(min_tokens_per_param) and min_tokens_per_param > 0):
        raise UserError(f"--min-tokens-per-param must be a positive number (or 0 to keep every run), got {min_tokens_per_param}")
    keep = (frame["D"] / frame["N"]).to_numpy() >= min_tokens_per_param
    if not keep.any():
        raise UserError(f"--min-tokens-per-param {min_tokens_per_param:g}: drops every run of {source} "
                        f"(the largest D/N is {float((frame['D'] / frame['N']).max()):.3g})")
    return frame[keep], frame[~keep]


def flag_outliers(rows: np.ndarray, loss: np.ndarray, predicted: np.ndarray, z_limit: float = OUTLIER_Z) -> list[dict[str, Any]]:
    """Runs whose log residual is more than ``z_limit`` robust standard deviations from the median residual.

    The scale is the MAD of the residuals, which the flagged runs themselves barely move (a standard deviation
    would be inflated by the very runs it should expose). ``rows`` are the runs' 1-based file rows.
    """
    with np.errstate(all="ignore"):
        residual = np.log(np.asarray(predicted, float)) - np.log(np.asarray(loss, float))
    finite = np.isfinite(residual)
    if finite.sum() < 5:
        return []
    centre = float(np.median(residual[finite]))
    scale = MAD_TO_SD * float(np.median(np.abs(residual[finite] - centre)))
    if not scale > 0:
        return []
    z = np.where(finite, (residual - centre) / scale, 0.0)
    flagged = np.flatnonzero(np.abs(z) > z_limit)
    flagged = flagged[np.argsort(-np.abs(z[flagged]))]
    return [{"row": int(rows[i]), "loss": float(loss[i]), "predicted": float(predicted[i]),
             "relative_error": float(predicted[i] / loss[i] - 1), "robust_z": float(z[i])} for i in flagged]


def describe_outliers(outliers: list[dict[str, Any]]) -> str:
    """One line naming the flagged rows, worst first."""
    shown = ", ".join(f"row {o['row']} (loss {o['loss']:.4g}, predicted {o['predicted']:.4g})" for o in outliers[:MAX_FLAGGED_SHOWN])
    more = f" and {len(outliers) - MAX_FLAGGED_SHOWN} more" if len(outliers) > MAX_FLAGGED_SHOWN else ""
    return (f"{len(outliers)} run{'s lie' if len(outliers) != 1 else ' lies'} more than {OUTLIER_Z:g} robust standard deviations "
            f"from the fit: {shown}{more}; check them, or leave them out with --where")
