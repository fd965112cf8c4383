"""Inference cost models: the GPU table and the analytic roofline.

``from archscale.cost import load_gpu, Workload, estimate_throughput`` is the
short path; the modules hold the details (:mod:`archscale.cost.gpus`,
:mod:`archscale.cost.roofline`).
"""

from archscale.cost.gpus import GPU, GPUS, gpu_table, load_gpu
from archscale.cost.roofline import (
    Efficiency,
    ThroughputEstimate,
    Workload,
    estimate_throughput,
    estimate_throughput_many,
)

__all__ = [
    "GPU",
    "GPUS",
    "Efficiency",
    "ThroughputEstimate",
    "Workload",
    "estimate_throughput",
    "estimate_throughput_many",
    "gpu_table",
    "load_gpu",
]
