"""Money: what a GPU-hour costs, and what a token costs at a throughput.

archscale ships no prices: what a GPU-hour costs depends on the provider, the commitment and the date, so a
price is always the user's, given as ``--gpu-price`` (US dollars per GPU-hour) or as a ``usd_per_hour`` field of
a ``--gpu-file`` entry. The flag wins over the file, so one table of devices serves several quotes.

Everything here is per GPU: a replica of ``tp`` GPUs costs ``tp`` times the hourly price, which is why
:func:`usd_per_million_tokens` takes the replica's GPU count beside its throughput.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from archscale.io.errors import UserError


class PricedDevice(Protocol):
    """What a price is read from: a device's name and its optional price (a :class:`~archscale.serving.devices.GPU`;
    named by shape, not imported, because devices imports this module to check the prices it reads)."""

    name: str
    usd_per_hour: float | None

PRICE_UNIT = "US dollars per GPU-hour"
PRICE_FIELD = "usd_per_hour"
"""The optional field of a --gpu-file entry that holds its price."""


def check_price(value: float, label: str) -> float:
    """``value`` as a price, or one line naming ``label`` (a flag, or a file's GPU and field) when it is not one.

    A price of zero or below, or not finite, would turn every cost into 0 or nonsense without saying so.
    """
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a positive price in {PRICE_UNIT}, got {value!r}") from None
    if not (math.isfinite(price) and price > 0):
        raise UserError(f"{label} must be a positive price in {PRICE_UNIT}, got {price:g}")
    return price


def resolve_price(flag_value: float | None, gpu: PricedDevice, flag: str = "--gpu-price") -> float | None:
    """The price to cost ``gpu`` at: ``flag_value`` when given (it overrides a file's price), else the device's own
    ``usd_per_hour`` from a --gpu-file, else None (the caller says a price is needed where it needs one)."""
    if flag_value is not None:
        return check_price(flag_value, flag)
    if gpu.usd_per_hour is not None:
        return check_price(gpu.usd_per_hour, f"GPU {gpu.name!r}: {PRICE_FIELD}")
    return None


def usd_per_million_tokens(tokens_per_s, usd_per_gpu_hour: float, gpus: int = 1) -> np.ndarray:
    """Dollars per 10^6 tokens for a replica of ``gpus`` GPUs producing ``tokens_per_s`` (vectorised over it).

    ``usd/hour x gpus / 3600 / tokens_per_s x 1e6``: the replica's cost per second over its tokens per second.
    Infinite where ``tokens_per_s <= 0`` (a shape that does not fit, or meets no latency limit, costs without
    end); NaN stays NaN (an unknown throughput is not an infinite cost). Returns an array shaped like
    ``tokens_per_s`` (0-d for a scalar: ``float()`` it).
    """
    price = check_price(usd_per_gpu_hour, "the price")
    if isinstance(gpus, bool) or not isinstance(gpus, (int, np.integer)) or gpus < 1:
        raise UserError(f"a replica's GPU count must be a positive integer, got {gpus!r}")
    rate = np.asarray(tokens_per_s, dtype=np.float64)
    usd_per_s = price * int(gpus) / 3600.0
    with np.errstate(divide="ignore", invalid="ignore"):
        per_million = usd_per_s / np.where(rate > 0, rate, 1.0) * 1e6
    return np.where(rate > 0, per_million, np.where(np.isnan(rate), np.nan, np.inf))


def format_usd(value: float) -> str:
    """Dollars as a table prints them: cents above $1, three significant figures below (a token is cheap), "-" for
    a shape that cannot serve (infinite cost) or an unknown one."""
    if not math.isfinite(value):
        return "-"
    return f"${value:,.2f}" if value >= 1 else f"${value:.3g}"
