"""Names a stored row and the model that predicts it share: serving engines and latency columns.

Why here, with no dependency: the vLLM worker runs in vLLM's own environment, which has no pandas, and writes bench
rows with these names; the serving model (which needs pandas) predicts the same columns. Both import the names
from this module, so they cannot drift apart.
"""

from __future__ import annotations

ENGINES = ("vllm", "torch", "sglang", "hf")
"""Serving engines a profile can be for: the two archscale measures with (torch, vLLM), and sglang and hf (Hugging Face
transformers ``generate``, eager and launch-bound at batch 1, so unlike any of the others), whose rows come from
published tables."""

LATENCY_PERCENTILES = (50, 90, 99)
"""The percentiles every bench row and estimate carries (with the mean), as vLLM's serving benchmark reports them."""
LATENCY_METRICS = ("ttft", "tpot", "itl")
"""Time to first token, time per output token after the first, and the gaps between consecutive output tokens."""


def latency_column(metric: str, statistic: str | int) -> str:
    """Column name of one latency figure, in milliseconds: ``ttft_ms_p99``, ``tpot_ms_mean`` (the bench rows' names)."""
    return f"{metric}_ms_{statistic if statistic == 'mean' else f'p{statistic}'}"


LATENCY_COLUMNS = tuple(latency_column(metric, statistic) for metric in LATENCY_METRICS
                        for statistic in ("mean", *LATENCY_PERCENTILES))
"""Every latency column of a bench row and an estimate, in milliseconds."""


LATENCY_STATISTICS: tuple[str | int, ...] = ("mean", *LATENCY_PERCENTILES)
