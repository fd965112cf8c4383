"""Stage: serving cost. How fast a shape serves on a device, before or after measuring it.

In: an :class:`~archscale.shapes.architecture.Architecture`, a device (:mod:`.devices`) and a workload.
Out: throughput and latency (TTFT, TPOT) estimates from the serving model (:mod:`.estimate`), also at the most
requests a latency limit allows, with terms calibrated per engine and
device in a profile (:mod:`.profiles`, fitted by :mod:`archscale.bench.calibrate`). :mod:`.probe` times
this CPU's matmul and memory bandwidth for a CPU device entry.

``from archscale.serving import load_gpu, Workload, resolve_profile`` is the short path.
"""

from archscale.serving.devices import GPU, GPUS, gpu_table, load_gpu
from archscale.serving.profiles import Profile, find_profile, load_profile, resolve_profile, save_profile
from archscale.serving.estimate import (
    CostTerms,
    EngineSettings,
    LatencyLimits,
    ThroughputEstimate,
    Workload,
    check_tensor_parallel,
    estimate_rows,
    estimate_throughput,
    estimate_throughput_many,
    estimate_under_limits,
)

__all__ = [
    "GPU",
    "GPUS",
    "CostTerms",
    "EngineSettings",
    "LatencyLimits",
    "Profile",
    "ThroughputEstimate",
    "Workload",
    "check_tensor_parallel",
    "estimate_rows",
    "estimate_throughput",
    "estimate_throughput_many",
    "estimate_under_limits",
    "find_profile",
    "gpu_table",
    "load_gpu",
    "load_profile",
    "resolve_profile",
    "save_profile",
]
