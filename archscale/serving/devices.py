"""The hardware table the serving model reads: peak dense bf16, HBM bandwidth, memory, interconnect.

Figures are vendor datasheet numbers (dense, i.e. without 2:4 sparsity), in
decimal units as the datasheets print them (memory: see :class:`GPU`). The
serving model (:mod:`archscale.serving.estimate`) scales them by efficiencies a
calibration profile fits, and a profile carries the figures it was fitted
against, so it is never applied to another device. A user adds or overrides GPUs with a JSON or CSV file of the same
fields (:func:`load_gpu`'s ``extra_file``), optionally with a price per GPU-hour (``usd_per_hour``): the table
itself carries none, as prices vary by provider and date (:mod:`archscale.serving.price`).

Sources: NVIDIA A100 datasheet (SXM: 312 TFLOP/s bf16, 1,555 GB/s for 40GB,
2,039 GB/s for 80GB, NVLink 600 GB/s); H100 datasheet (SXM 989 TFLOP/s, 3.35
TB/s, NVLink 900 GB/s; PCIe 756 TFLOP/s, 2.0 TB/s, PCIe Gen5 128 GB/s); H200
datasheet (SXM 989 TFLOP/s, 4.8 TB/s, 141 GB, NVLink 900 GB/s); L40S (362
TFLOP/s, 864 GB/s, 48 GB GDDR6, PCIe Gen4 64 GB/s); L4 (121 TFLOP/s, 300 GB/s,
24 GB, PCIe Gen4 64 GB/s).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from archscale.io.errors import UserError
from archscale.io.files import read_json
from archscale.serving.price import PRICE_FIELD, check_price


@dataclass(frozen=True)
class GPU:
    """One accelerator as the roofline sees it.

    Attributes:
        name: key used on the command line (lowercase).
        bf16_tflops: dense bf16 tensor-core peak, TFLOP/s.
        hbm_tb_s: device memory bandwidth, TB/s.
        memory_gb: device memory as the datasheet prints it. HBM datasheets print
            binary gigabytes (an A100 "40GB" has 40 GiB: nvidia-smi shows 40,960
            MiB; an H200 "141GB" shows 143,771 MiB), so archscale reads it as GiB.
        interconnect_gb_s: GPU-to-GPU bandwidth, GB/s (NVLink, else PCIe): the
            bandwidth part of a tensor-parallel all-reduce (its latency is a
            cost term, ``t_allreduce``).
        usd_per_hour: what one GPU-hour costs, in US dollars, when a --gpu-file gives it; None otherwise. Not a
            physical figure: it is left out of :data:`FIELDS` (so of a profile's device block and fingerprint) and
            of equality (a priced H100 is the same device as the built-in one).
    """

    name: str
    bf16_tflops: float
    hbm_tb_s: float
    memory_gb: float
    interconnect_gb_s: float
    usd_per_hour: float | None = field(default=None, compare=False)

    @property
    def flops_per_s(self) -> float:
        return self.bf16_tflops * 1e12

    @property
    def bytes_per_s(self) -> float:
        return self.hbm_tb_s * 1e12

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes, reading ``memory_gb`` as GiB (see the class docstring)."""
        return self.memory_gb * 2**30


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("a100-40gb", 312.0, 1.555, 40.0, 600.0),
        GPU("a100-80gb", 312.0, 2.039, 80.0, 600.0),
        GPU("h100-sxm", 989.0, 3.35, 80.0, 900.0),
        GPU("h100-pcie", 756.0, 2.0, 80.0, 128.0),
        GPU("h200", 989.0, 4.8, 141.0, 900.0),
        GPU("l40s", 362.0, 0.864, 48.0, 64.0),
        GPU("l4", 121.0, 0.3, 24.0, 64.0),
    )
}

FIELDS = ("name", "bf16_tflops", "hbm_tb_s", "memory_gb", "interconnect_gb_s")
"""The physical fields: what every GPU entry needs and what a profile records of its device (a price is neither)."""


def load_gpu(name: str, extra_file: str | Path | None = None) -> GPU:
    """Look up a GPU by (case-insensitive) name, after merging any user file over the built-in table."""
    table = gpu_table(extra_file)
    key = name.strip().lower()
    if key not in table:
        raise UserError(f"unknown GPU {name!r}: known GPUs are {', '.join(table)}"
                        + ("" if extra_file else " (describe another in a --gpu-file, JSON or CSV with fields "
                           + ", ".join(FIELDS) + f", optionally {PRICE_FIELD}; `archscale bench probe --out cpu.json` "
                           "writes one for this CPU)"))
    return table[key]


def gpu_table(extra_file: str | Path | None = None) -> dict[str, GPU]:
    """The built-in GPUs plus those in ``extra_file`` (which override same-named entries)."""
    table = dict(GPUS)
    if extra_file is not None:
        for gpu in read_gpu_file(extra_file):
            table[gpu.name] = gpu
    return table


def read_gpu_file(path: str | Path) -> list[GPU]:
    """Read GPUs from JSON (a list of objects, one object, or ``{name: {fields}}``) or CSV with a header.

    An entry of a built-in name with a price and none of the physical fields prices that GPU (a file of
    ``name,usd_per_hour`` rows is a price list), so a user need not restate datasheet figures to give a price.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GPU file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = _json_records(path)
    elif suffix == ".csv":
        records = _csv_records(path)
    else:
        raise UserError(f"{path}: GPU file must end in .json or .csv")
    if not records:  # an empty list, or a CSV of a header alone: a file that says nothing is not silently a no-op
        raise UserError(f"{path}: holds no GPU entry; describe one per row or object with fields {', '.join(FIELDS)} "
                        f"(optionally {PRICE_FIELD}), or leave out --gpu-file")
    return [_priced_builtin(record, path) or gpu_from_record(record, path, i) for i, record in enumerate(records, start=1)]


def _priced_builtin(record, path: Path) -> GPU | None:
    """A built-in GPU with the record's price, when the record gives a built-in name and a price only; else None."""
    if not isinstance(record, dict) or any(_given(record.get(f)) for f in FIELDS[1:]):
        return None
    key = str(record.get("name", "")).strip().lower()
    if key not in GPUS or not _given(record.get(PRICE_FIELD)):
        return None
    return replace(GPUS[key], usd_per_hour=_price(record, path, key))


def _given(value) -> bool:
    """A field is given unless absent, JSON null or an empty CSV cell."""
    return value not in (None, "")


def _price(record: dict, path: Path, name: str) -> float | None:
    """The entry's optional ``usd_per_hour``, checked: one line naming the file, the GPU and the field."""
    value = record.get(PRICE_FIELD)
    return check_price(value, f"{path}: GPU {name!r}: {PRICE_FIELD}") if _given(value) else None


def _json_records(path: Path) -> list[dict]:
    data = read_json(path)
    if isinstance(data, dict) and "name" in data:
        return [data]
    if isinstance(data, dict):
        return [{"name": key, **value} if isinstance(value, dict) else {"name": key, "_bad": value}
                for key, value in data.items()]
    if isinstance(data, list):
        return data
    raise UserError(f"{path}: expected a list of GPU objects or an object, got {type(data).__name__}")


def _csv_records(path: Path) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read CSV ({exc})") from None


def gpu_from_record(record, path: Path, index: int) -> GPU:
    """Validate one record: every physical field present, numbers finite and positive; a price optional."""
    if not isinstance(record, dict) or "_bad" in record:
        raise UserError(f"{path}: GPU entry {index} is not an object with fields {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if not _given(record.get(f))]
    if missing:
        raise UserError(f"{path}: GPU entry {index} is missing {', '.join(missing)}")
    values = {"name": str(record["name"]).strip().lower()}
    for field_name in FIELDS[1:]:
        try:
            value = float(record[field_name])
        except (TypeError, ValueError):
            raise UserError(f"{path}: GPU {values['name']!r}: {field_name} is not a number: {record[field_name]!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{path}: GPU {values['name']!r}: {field_name} must be positive, got {value!r}")
        values[field_name] = value
    return GPU(**values, usd_per_hour=_price(record, path, values["name"]))

