"""Write data/dissertation_throughput.csv: the dissertation's published throughput tables as bench records.

Why bench records: in the store's CSV export format, the published figures are
read by every bench command as measurements (``archscale bench --show``,
``archscale bench calibrate --store data/dissertation_throughput.csv``), beside
the user's own, with the shape columns of each model filled from the presets.

Units: the tables say "tokens/s" without saying whether prompt tokens count.
archscale reads them as OUTPUT tokens/s (docs/throughput-units.md gives the
evidence), stores them in ``output_tokens_per_s`` and derives the total
(prompt + generated) as ``output * (input_len + output_len) / output_len``.

Sources (../shared/seeds/dissertation_ch5_ch6_appB_C.md): Table 6.3 (vLLM and
SGLang on A100-40GB and H200, 4096 in / 1024 out, batch 16-128, 5 repeats
averaged); Tables 6.5 and 6.6 (vLLM on H200 at 4k/1k and 2k/1k). Tables 6.5/6.6
give no batch size; their LLaMA-3.2-1B 4k/1k figure (9306) and LLaMA-3.2-3B
and Surefire figures equal Table 6.3's batch-128 values, so they are recorded
at batch 128, and only their new points are added (the models and workloads
Table 6.3 does not have).

    python experiments/reproduce/make_dissertation_throughput.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from archscale.shapes.architecture import PRESETS
from archscale.bench.records import COLUMNS, shape_fields

OUT = Path(__file__).resolve().parents[2] / "data" / "dissertation_throughput.csv"
BATCHES = (16, 32, 64, 128)
DEVICES = {"a100-40gb": "NVIDIA A100-SXM4-40GB", "h200": "NVIDIA H200"}
TABLE_63 = {  # (gpu, engine) -> model -> tokens/s at batch 16, 32, 64, 128
    ("a100-40gb", "vllm"): {
        "llama-3.2-1b": (1931.87, 2602.72, 3409.85, 3825.91), "surefire-1b": (2116.49, 3290.23, 4028.69, 4800.05),
        "llama-3.2-3b": (904.83, 1121.39, 1136.61, 1222.03), "surefire-3b": (1005.44, 1356.07, 1613.32, 1476.22)},
    ("a100-40gb", "sglang"): {
        "llama-3.2-1b": (2748.84, 3643.27, 4703.92, 5353.29), "surefire-1b": (3239.55, 4737.63, 5832.01, 6962.24),
        "llama-3.2-3b": (1173.51, 1452.97, 1668.67, 1762.18), "surefire-3b": (1318.23, 1726.20, 2081.44, 2251.74)},
    ("h200", "vllm"): {
        "llama-3.2-1b": (4311.97, 6221.14, 8131.65, 9306.36), "surefire-1b": (4532.85, 6992.71, 9493.46, 11282.56),
        "llama-3.2-3b": (2269.53, 3119.94, 3872.14, 4311.43), "surefire-3b": (2309.48, 3271.63, 4242.33, 4841.53)},
    ("h200", "sglang"): {
        "llama-3.2-1b": (4812.67, 6939.88, 8038.34, 8608.57), "surefire-1b": (5900.52, 8798.68, 11214.40, 12645.55),
        "llama-3.2-3b": (2593.04, 3370.42, 3868.42, 4183.09), "surefire-3b": (2542.21, 3488.79, 4446.66, 4877.16)},
}
TABLES_65_66 = [  # (model, input_len, output_len, tokens/s, table): vLLM on H200, recorded at batch 128
    ("panda-1b", 4096, 1024, 6218.0, "6.5"),
    ("llama-3.2-1b", 2048, 1024, 11948.0, "6.5"),
    ("panda-1b", 2048, 1024, 8961.0, "6.5"),
    ("surefire-1b", 2048, 1024, 13890.0, "6.5"),
    ("olmo-2-1b", 2048, 1024, 7486.0, "6.5"),
    ("panda-3b", 4096, 1024, 3335.0, "6.6"),
    ("qwen2.5-3b", 4096, 1024, 6470.0, "6.6"),
]


def record(model: str, gpu: str, engine: str, batch: int, input_len: int, output_len: int, published: float,
           table: str) -> dict:
    """One published figure as a bench record, read as output tokens/s."""
    row = dict.fromkeys(COLUMNS)
    row.update(shape_fields(PRESETS[model]))
    row.update(source=f"dissertation Table {table}", backend=engine, gpu=gpu, device_name=DEVICES[gpu],
               dtype="bfloat16", tp=1, batch_size=batch, input_len=input_len, output_len=output_len, repeats=5,
               output_tokens_per_s=published, tokens_per_s=published * (input_len + output_len) / output_len,
               output_tokens=batch * output_len, status="ok")
    return row


def main() -> None:
    rows = [record(model, gpu, engine, batch, 4096, 1024, value, "6.3")
            for (gpu, engine), models in TABLE_63.items()
            for model, values in models.items() for batch, value in zip(BATCHES, values)]
    rows += [record(model, "h200", "vllm", 128, i, o, value, table) for model, i, o, value, table in TABLES_65_66]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame.to_csv(OUT, index=False)
    print(f"wrote {len(frame)} rows to {OUT}")


if __name__ == "__main__":
    main()
