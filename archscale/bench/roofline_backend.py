"""The roofline "backend": :func:`archscale.cost.roofline.estimate_throughput` as bench records.

Why a backend and not just ``archscale arch --gpu``: emitted in the same
record format, in the same store, the analytic estimate sits row for row
beside the torch and vLLM measurements of the same (config, GPU, workload,
batch), which is what ``bench calibrate`` and a reader comparing them need.
The efficiencies used are recorded in every row (``efficiency_compute``,
``efficiency_memory``), so a calibrated estimate is never mistaken for the
default one.
"""

from __future__ import annotations

from typing import Any, Iterator

from archscale.bench.records import BYTES_PER_ELEMENT, canonical_dtype, failed
from archscale.bench.sweep import BenchOptions, Target, Tick
from archscale.cost.gpus import load_gpu
from archscale.cost.roofline import Workload, estimate_throughput
from archscale.errors import UserError


class RooflineBackend:
    """Estimate every (config, batch size) on the ``--gpu`` of the options."""

    name = "roofline"

    def __init__(self, options: BenchOptions) -> None:
        if not options.gpu:
            raise UserError("--backend roofline needs --gpu (e.g. --gpu h100-sxm): the estimate is for a GPU")
        self.options = options
        self.gpu = load_gpu(options.gpu, options.gpu_file)
        self.dtype_name = canonical_dtype(options.dtype) if options.dtype else "bfloat16"

    def run(self, target: Target, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]:
        options, gpu = self.options, self.gpu
        fields = {"gpu": gpu.name, "device_name": f"roofline:{gpu.name}", "dtype": self.dtype_name,
                  "efficiency_compute": options.efficiency.compute, "efficiency_memory": options.efficiency.memory}
        for batch in options.batch_sizes:
            estimate = estimate_throughput(target.arch, gpu, Workload(batch, options.input_len, options.output_len),
                                           tp=options.tp, efficiency=options.efficiency,
                                           bytes_per_element=BYTES_PER_ELEMENT[self.dtype_name])
            tick(1)
            if estimate.concurrency < 1:
                yield batch, failed(f"weights alone do not fit: needs {estimate.memory_gb_needed:.1f} GB, "
                                    f"{options.tp} x {gpu.name} has {options.tp * gpu.memory_gb:.0f} GB",
                                    memory_gb=estimate.memory_gb_needed, **fields)
                continue
            yield batch, {
                **fields,
                "tokens_per_s": estimate.total_tokens_per_s,
                "output_tokens_per_s": estimate.output_tokens_per_s,
                "prefill_s": estimate.prefill_s,
                "decode_s": estimate.decode_s,
                "output_tokens": batch * options.output_len,
                "memory_gb": estimate.memory_gb_needed,
                "torch_version": None,
                "status": "ok",
            }
