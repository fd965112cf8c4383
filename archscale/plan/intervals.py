"""Bootstrap percentile intervals for ``plan``, and the warning an interval needs when it cannot be read plainly.

A 95% percentile interval is read as "the estimate, give or take". That reading fails in two ways this module
detects rather than lets through: the estimate lies outside its own interval, or it sits in the interval's outer
tail (within :data:`TAIL` of the width from an end). Both say the bootstrap distribution is skewed or the estimate
is unstable (a few resamples land somewhere else entirely), so every interval ``plan`` prints goes through
:func:`interval_note`, and the note is printed and written beside it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

INTERVAL = (2.5, 97.5)
MIN_DRAWS = 10  # fewer finite resamples give no interval worth printing
TAIL = 0.05  # an estimate within 5% of the interval's width from an end is in its outer tail
SKEW_MARK = "†"  # marks a table cell whose interval has a note


def interval(values: Sequence[float] | np.ndarray) -> tuple[float, float] | None:
    """95% percentile interval of the finite values; None when there are too few to mean anything."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if len(finite) < MIN_DRAWS:
        return None
    low, high = np.percentile(finite, INTERVAL)
    return float(low), float(high)


def interval_note(estimate: float | None, pair: Sequence[float] | None) -> str | None:
    """Why ``pair`` should not be read as "estimate, give or take", or None when it can be."""
    if estimate is None or not pair or not np.isfinite(estimate):
        return None
    low, high, value = float(pair[0]), float(pair[1]), float(estimate)
    if value < low or value > high:
        side = "below" if value < low else "above"
        return (f"the estimate lies {side} its own 95% interval: the bootstrap distribution is skewed or the estimate "
                "is unstable")
    width = high - low
    if width > 0 and min(value - low, high - value) < TAIL * width:
        end = "bottom" if value - low < high - value else "top"
        return (f"the estimate lies in its interval's {end} {TAIL:.0%}: the bootstrap distribution is skewed or the "
                "estimate is unstable")
    return None


def interval_notes(estimates: dict[str, Any], intervals: dict[str, Any]) -> dict[str, Any]:
    """:func:`interval_note` for each interval in ``intervals`` (scalars, or lists per budget) against ``estimates``
    of the same shape; keys with no estimate are skipped."""
    notes: dict[str, Any] = {}
    for key, estimate in estimates.items():
        pairs = intervals.get(key)
        if isinstance(estimate, (list, tuple)):
            pairs = pairs or [None] * len(estimate)
            notes[key] = [interval_note(e, p) for e, p in zip(estimate, pairs)]
        else:
            notes[key] = interval_note(estimate, pairs)
    return notes


def any_note(notes: dict[str, Any]) -> bool:
    """Whether any interval in ``notes`` (as :func:`interval_notes` returns them) has a note."""
    return any(any(value) if isinstance(value, list) else bool(value) for value in notes.values())
