"""Inference cost: the device table, the serving model, and calibration profiles.

``from archscale.cost import load_gpu, Workload, resolve_profile`` is the short
path; the modules hold the details (:mod:`archscale.cost.gpus`,
:mod:`archscale.cost.serving`, :mod:`archscale.cost.profiles`).
"""

from archscale.cost.gpus import GPU, GPUS, gpu_table, load_gpu
from archscale.cost.profiles import Profile, find_profile, load_profile, resolve_profile, save_profile
from archscale.cost.serving import (
    CostTerms,
    EngineSettings,
    ThroughputEstimate,
    Workload,
    check_tensor_parallel,
    estimate_rows,
    estimate_throughput,
    estimate_throughput_many,
)

__all__ = [
    "GPU",
    "GPUS",
    "CostTerms",
    "EngineSettings",
    "Profile",
    "ThroughputEstimate",
    "Workload",
    "check_tensor_parallel",
    "estimate_rows",
    "estimate_throughput",
    "estimate_throughput_many",
    "find_profile",
    "gpu_table",
    "load_gpu",
    "load_profile",
    "resolve_profile",
    "save_profile",
]
