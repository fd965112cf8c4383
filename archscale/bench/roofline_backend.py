"""The roofline "backend": the serving model's estimate (:mod:`archscale.serving.estimate`) as bench records.

Why a backend and not just ``archscale arch --gpu``: emitted in the same
record format, in the same store, the estimate sits row for row beside the
torch and vLLM measurements of the same (config, GPU, workload, batch), which
is what ``bench calibrate`` and a reader comparing them need. Every row names
the profile behind it (``profile``; ``uncalibrated`` for the bare roofline),
so a calibrated estimate is never mistaken for the default one, and
``concurrency`` says how many sequences the engine could run at once: a batch
whose KV cache does not fit runs in waves, which real engines do rather than
fail, and the row says so. A model whose weights alone do not fit is a failed
row. Rows carry the model's TTFT, TPOT and ITL predictions in the measured
rows' latency columns, so estimate and measurement compare column for column.
"""

from __future__ import annotations

from typing import Any, Iterator

import pandas as pd

from archscale.io.units import BYTES_PER_ELEMENT, canonical_dtype
from archscale.bench.records import failed
from archscale.bench.types import BenchOptions, Target, Tick
from archscale.serving.devices import load_gpu
from archscale.serving.profiles import resolve_profile
from archscale.io.vocabulary import LATENCY_COLUMNS
from archscale.serving.estimate import Workload, why_nothing_runs
from archscale.io.errors import UserError


class RooflineBackend:
    """Estimate every (config, batch size) on the ``--gpu`` of the options, with its matching profile."""

    name = "roofline"

    def __init__(self, options: BenchOptions) -> None:
        if not options.gpu:
            raise UserError("--backend roofline needs --gpu (e.g. --gpu h100-sxm): the estimate is for a device")
        self.options = options
        self.dtype_name = canonical_dtype(options.dtype) if options.dtype else "bfloat16"
        self.profile = resolve_profile(options.profile, load_gpu(options.gpu, options.gpu_file), options.engine,
                                       self.dtype_name)

    def run(self, target: Target, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]:
        options, profile = self.options, self.profile
        fields = {"gpu": profile.device.name, "device_name": f"estimate:{profile.device.name}", "dtype": self.dtype_name,
                  "profile": profile.name, "torch_version": None}
        frame = pd.DataFrame([target.arch.shape_columns()])
        for batch in options.batch_sizes:
            row = profile.estimate(frame, Workload(batch, options.input_len, options.output_len), options.tp,
                                   BYTES_PER_ELEMENT[self.dtype_name]).iloc[0]
            tick(1)
            if row["concurrency"] < 1:
                workload = Workload(batch, options.input_len, options.output_len)
                yield batch, failed(why_nothing_runs(float(row["memory_used_gb"]), profile.device, options.tp,
                                                     profile.settings, workload),
                                    memory_gb=float(row["memory_used_gb"]), concurrency=0, **fields)
                continue
            yield batch, {
                **fields,
                "tokens_per_s": float(row["tokens_per_s"]),
                "output_tokens_per_s": float(row["output_tokens_per_s"]),
                "prefill_s": float(row["prefill_s"]),
                "decode_s": float(row["decode_s"]),
                "output_tokens": batch * options.output_len,
                "memory_gb": float(row["memory_used_gb"]),
                "concurrency": int(row["concurrency"]),
                **{column: float(row[column]) for column in LATENCY_COLUMNS},
                "status": "ok",
            }

