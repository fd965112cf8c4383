"""Throughput profiles: the serving model's terms fitted for one (engine, device, dtype), with their evidence.

Why a profile and not a pair of efficiencies: what an engine spends besides
bytes and FLOPs (per step, per sequence) differs between engines, devices and
their software, so a calibration holds only for the triple it was measured
on. A profile carries that triple, the device figures it was fitted against,
which terms were fitted and which fixed, where the measurements came from, and
how well it predicted rows it was not fitted on (above all the speedup between
architectures, which is what ``search`` ranks by). ``search`` and ``bench``
pick the profile that matches their engine, device and dtype, and say which
one they used; with none they say the estimate is an uncalibrated roofline.
A profile for another device is refused, never applied silently.

Where profiles are found: a path given with ``--profile``; otherwise every
``*.json`` in the directories of ``$ARCHSCALE_PROFILES`` (``:``-separated),
then the shipped ones in ``data/profiles/`` (fitted on published
measurements; their ``source`` says which). The first match wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from archscale.serving.devices import FIELDS as DEVICE_FIELDS
from archscale.serving.devices import GPU, gpu_from_record
from archscale.serving.estimate import (
    TERM_NAMES,
    CostTerms,
    EngineSettings,
    LatencyLimits,
    Workload,
    estimate_throughput_many,
    estimate_under_limits,
)
from archscale.io.errors import UserError
from archscale.io.vocabulary import ENGINES
from archscale.io.files import read_json, write_json

KIND = "archscale-throughput-profile"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "profiles"
ENV_DIRS = "ARCHSCALE_PROFILES"
UNCALIBRATED = "uncalibrated"



def check_engine(engine: str, flag: str = "--engine") -> str:
    """Refuse an engine no profile or measured row can be for: a typo would otherwise find no profile and fall back,
    silently, to the uncalibrated estimate."""
    if engine not in ENGINES:
        raise UserError(f"{flag} {engine!r}: unknown serving engine; known engines: {', '.join(ENGINES)}")
    return engine


@dataclass(frozen=True)
class Profile:
    """A calibrated (or, with ``fitted`` empty, the uncalibrated) serving model for one engine, device and dtype."""

    name: str
    engine: str
    device: GPU
    dtype: str = "bfloat16"
    terms: CostTerms = field(default_factory=CostTerms)
    settings: EngineSettings = field(default_factory=EngineSettings)
    fitted: tuple[str, ...] = ()
    source: str = ""
    validation: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def uncalibrated(cls, device: GPU, engine: str = "vllm", dtype: str = "bfloat16") -> "Profile":
        """The roofline with default efficiencies and no overhead terms: optimistic, and labelled so."""
        return cls(name=UNCALIBRATED, engine=engine, device=device, dtype=dtype,
                   source="no calibration: roofline with default efficiencies and no per-step or per-sequence time")

    @property
    def calibrated(self) -> bool:
        return bool(self.fitted)

    @property
    def term_sets(self) -> list[CostTerms]:
        """The fitted terms, then every admissible refit at another eta_kv (``validation.eta_kv_range``): the spread
        of an estimate over them is the part of its uncertainty that the calibration rows could not pin down."""
        refits = (self.validation.get("eta_kv_range") or {}).get("refits") or []
        return [self.terms] + [CostTerms(**{k: float(v) for k, v in r["terms"].items()})
                               for r in refits if r.get("admissible") and r.get("eta_kv") != self.terms.eta_kv]

    @property
    def transferred_from(self) -> str | None:
        """The profile this one was carried over from (another device's), or None for one fitted here."""
        return (self.validation.get("transferred") or {}).get("from")

    def transferred(self, device: GPU) -> "Profile":
        """This profile's terms on another device: efficiencies applied to that device's datasheet peaks, time terms
        (per step, per sequence) kept, since they are the engine's. Its error is the worst measured cross-device error
        recorded in this profile (``validation.transfer``: a profile fitted on one device, scored on another device's
        measurements; experiments/validate/profile_transfer.py); without one there is nothing to quote, and the
        transfer is refused.
        """
        measured = self.validation.get("transfer") or {}
        if not measured:
            raise UserError(f"profile {self.name} has no measured cross-device error (validation.transfer), so it cannot "
                            f"stand in for {device.name}; calibrate {device.name} itself, or use --profile none")
        worst = max(float(entry["speedup_mean_abs_points"]) for entry in measured.values())
        directions = "; ".join(f"{pair.replace('->', ' to ')} {float(entry['speedup_mean_abs_points']):.1f} points over "
                               f"{entry['n_pairs']} pairs" for pair, entry in sorted(measured.items()))
        return dataclasses.replace(
            self, name=f"{self.name}-on-{device.name}", device=device, path=None,
            source=(f"transferred from profile {self.name} (fitted on {self.device.name}): its efficiencies on the "
                    f"{device.name} datasheet peaks, its per-step and per-sequence times kept; measured cross-device "
                    f"speedup error of a transfer, fitted on one device and scored on the other's rows: {directions}; "
                    f"trusted to the worst, {worst:.1f} points"),
            validation={"transferred": {"from": self.name, "from_device": self.device.name},
                        "heldout": {"speedup_mean_abs_points": worst, "note": "the worst measured cross-device error"},
                        "eta_kv_range": self.validation.get("eta_kv_range")})

    @property
    def heldout_speedup_points(self) -> float | None:
        """Mean |predicted - measured| speedup between architectures on held-out rows, in points (x100)."""
        for key in ("heldout", "leave_one_architecture_out"):
            value = (self.validation.get(key) or {}).get("speedup_mean_abs_points")
            if value is not None:
                return float(value)
        return None

    def _latency_figures(self) -> tuple[str, dict]:
        """("heldout" or "fit", {latency column: its error figures}) from the calibration's report, empty if none."""
        latency = (self.validation.get("latency") or {}) if self.calibrated else {}
        split = "heldout" if latency.get("heldout") else "fit"
        return split, latency.get(split) or {}

    @property
    def latency_measured(self) -> bool:
        """Whether this profile's TPOT and TTFT were ever compared with measured rows."""
        return bool(self._latency_figures()[1])

    def latency_measured_for(self, columns: list[str]) -> bool:
        """Whether each of these latency columns (``tpot_ms_p99``, ...) was compared with measured rows: an operating
        point chosen by a limit on them then has a measured error (a TPOT p50 figure says nothing of p99)."""
        figures = self._latency_figures()[1]
        return bool(columns) and all(column in figures for column in columns)

    def latency_trust(self) -> str:
        """How far this profile's TPOT and TTFT predictions were checked: the median |error| on the rows it was
        calibrated with latency on (held-out rows where it had them), or that nothing measured it."""
        if not self.calibrated:
            return f"{self.label}: its TPOT and TTFT were never compared with a measurement"
        split, figures = self._latency_figures()
        shown = [f"{column.split('_')[0].upper()} {column.split('_')[-1]} {100 * figures[column]['median_abs_rel_err']:.1f}%"
                 for column in ("tpot_ms_p50", "tpot_ms_p99", "ttft_ms_p50") if column in figures]
        if not shown:
            return (f"{self.label} was calibrated on throughput alone: its TPOT and TTFT, and so each operating point, "
                    "are the serving model's predictions with no measured error (calibrate on bench rows that carry "
                    "latency to measure it)")
        where = "held-out rows" if split == "heldout" else "the rows it was fitted on"
        return f"{self.label}'s latency, median |error| on {where}: {', '.join(shown)}"

    @property
    def label(self) -> str:
        """Short name for tables and plot axes."""
        return f"profile {self.name}" if self.calibrated else f"uncalibrated roofline ({self.device.name})"

    def describe(self) -> str:
        """One line saying where estimates come from and how far to trust them."""
        if not self.calibrated:
            return (f"uncalibrated roofline on {self.device.name}: no {self.engine} profile for this device and dtype, "
                    "so absolute numbers are optimistic and speedups of KV-saving shapes overstated "
                    "(calibrate one with `archscale bench calibrate`)")
        error = self.heldout_speedup_points
        trust = f"held-out speedup error {error:.1f} points" if error is not None else "no held-out validation"
        return f"profile {self.name} ({self.engine} on {self.device.name}, {self.dtype}; {trust}; {self.source})"

    def estimate(self, candidates: pd.DataFrame, workload: Workload, tp: int = 1, bytes_per_element: int = 2,
                 with_latency: bool = True) -> pd.DataFrame:
        """:func:`~archscale.serving.estimate.estimate_throughput_many` with this profile's device, terms and settings."""
        return estimate_throughput_many(candidates, self.device, workload, tp, self.terms, self.settings, bytes_per_element,
                                        with_latency)

    def estimate_under_limits(self, candidates: pd.DataFrame, workload: Workload, limits: LatencyLimits, tp: int = 1,
                              bytes_per_element: int = 2) -> pd.DataFrame:
        """:func:`~archscale.serving.estimate.estimate_under_limits` with this profile: each row at the most requests
        (up to ``workload.batch_size``) that meet ``limits``."""
        return estimate_under_limits(candidates, self.device, workload, limits, tp, self.terms, self.settings,
                                     bytes_per_element)

    def to_json(self) -> dict[str, Any]:
        from archscale import __version__

        return {
            "kind": KIND,
            "name": self.name,
            "engine": self.engine,
            "device": {name: getattr(self.device, name) for name in DEVICE_FIELDS},
            "dtype": self.dtype,
            "terms": self.terms.as_dict(),
            "fitted": list(self.fitted),
            "settings": self.settings.as_dict(),
            "throughput_units": "the model predicts both output and total (prompt + generated) tokens/s",
            "source": self.source,
            "validation": self.validation,
            "fingerprint": self.fingerprint(),
            "archscale_version": __version__,
        }

    def fingerprint(self) -> str:
        """A hash of what the fit produced and was fitted against (device, terms, settings, engine, dtype): a file
        whose device block or terms were edited afterwards no longer matches it, and is refused on loading.

        A term added to the model later (:data:`TERMS_ADDED_LATER`) counts only when it is not 0, and a setting added
        later (:data:`SETTINGS_ADDED_LATER`) only away from its old behaviour: a profile fitted before either existed
        keeps the fingerprint it was written with."""
        fitted_on = {"engine": self.engine, "dtype": self.dtype, "fitted": list(self.fitted),
                     "device": {name: float(getattr(self.device, name)) if name != "name" else self.device.name
                                for name in DEVICE_FIELDS},
                     "terms": {k: round(float(v), 12) for k, v in self.terms.as_dict().items()
                               if not (k in TERMS_ADDED_LATER and v == 0.0)},
                     "settings": {k: v for k, v in self.settings.as_dict().items()
                                  if not (k in SETTINGS_ADDED_LATER and v == SETTINGS_ADDED_LATER[k])}}
        return hashlib.sha256(json.dumps(fitted_on, sort_keys=True).encode()).hexdigest()[:16]


TERMS_ADDED_LATER = ("t_expert_gb", "t_attn_gflop")
"""Cost terms the model gained after profiles were shipped; at 0 they leave a profile's fingerprint as it was."""
SETTINGS_ADDED_LATER = {"first_prompt_alone": False}
"""Engine settings the model gained after profiles were shipped, with the value every earlier profile had: at it
they leave a profile's fingerprint as it was."""


def save_profile(profile: Profile, path: str | Path) -> Path:
    write_json(path, profile.to_json())
    return Path(path)


def load_profile(path: str | Path) -> Profile:
    """Read a profile JSON, checking every part (a wrong file is one line naming it)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"{path}: not an archscale throughput profile (write one with `archscale bench calibrate --out FILE.json`)")
    try:
        device = gpu_from_record(data["device"], path, 1)
        terms = CostTerms(**{k: float(v) for k, v in data["terms"].items()})
        settings = EngineSettings(**data.get("settings", {}))
        fitted = tuple(str(t) for t in data.get("fitted", ()))
        name, engine, dtype = str(data["name"]), str(data["engine"]), str(data.get("dtype", "bfloat16"))
    except KeyError as exc:
        raise UserError(f"{path}: profile is missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: malformed profile ({exc})") from None
    unknown = [t for t in fitted if t not in TERM_NAMES]
    if unknown:
        raise UserError(f"{path}: unknown fitted term {unknown[0]!r}; terms are {', '.join(TERM_NAMES)}")
    profile = Profile(name=name, engine=engine, device=device, dtype=dtype, terms=terms, settings=settings, fitted=fitted,
                      source=str(data.get("source", "")), validation=dict(data.get("validation") or {}), path=path)
    moved = profile.validation.get("transferred")
    if moved is not None and not (isinstance(moved, dict) and moved.get("from") and moved.get("from_device")):
        raise UserError(f"{path}: says it was transferred from another device's profile but does not name the profile "
                        "and device it came from ('validation.transferred': from, from_device), so its error cannot "
                        "be quoted; use the source profile's device, or calibrate this device")
    recorded = data.get("fingerprint")
    if recorded is not None and recorded != profile.fingerprint():
        raise UserError(f"{path}: its device, terms or settings were changed after it was fitted (fingerprint "
                        f"{recorded} != {profile.fingerprint()}), so its validation no longer describes it; refit with "
                        "`archscale bench calibrate`, or restore the file")
    return profile


def profile_dirs() -> list[Path]:
    """Where profiles are looked up, in order: ``$ARCHSCALE_PROFILES`` directories, then the shipped ones."""
    listed = [Path(p).expanduser() for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p.strip()]
    return [*listed, SHIPPED_DIR]


def available_profiles() -> list[Profile]:
    """Every readable profile in :func:`profile_dirs` (an unreadable file there is an error, not skipped)."""
    found = []
    for directory in profile_dirs():
        if directory.is_dir():
            found += [load_profile(path) for path in sorted(directory.glob("*.json"))]
    return found


def find_profile(engine: str, device: str, dtype: str = "bfloat16", profiles: list[Profile] | None = None) -> Profile | None:
    """The first profile for exactly this engine, device key and dtype, or None (``profiles``: already read ones)."""
    for profile in available_profiles() if profiles is None else profiles:
        if (profile.engine, profile.device.name, profile.dtype) == (engine, device.lower(), dtype):
            return profile
    return None


def transferred_profile(engine: str, device: GPU, dtype: str = "bfloat16",
                        profiles: list[Profile] | None = None) -> Profile | None:
    """For a device with no profile of its own: the profile of the most similar measured device (nearest in log peak
    compute and log memory bandwidth) that has a measured cross-device error, carried over; None without one.

    Only devices of the built-in table (datasheet GPUs, like those the transfer error was measured between) get one:
    a device from a --gpu-file, such as this CPU from `bench probe`, keeps the uncalibrated estimate.
    """
    import math

    from archscale.serving.devices import GPUS

    if device.name not in GPUS:
        return None
    donors = [p for p in (available_profiles() if profiles is None else profiles)
              if (p.engine, p.dtype) == (engine, dtype) and p.calibrated and p.validation.get("transfer")]
    if not donors:
        return None

    def distance(p: Profile) -> float:
        return (abs(math.log(p.device.bf16_tflops / device.bf16_tflops)) + abs(math.log(p.device.hbm_tb_s / device.hbm_tb_s)))

    return min(donors, key=distance).transferred(device)


def resolve_profile(spec: str | Path | None, device: GPU, engine: str = "vllm", dtype: str = "bfloat16") -> Profile:
    """The profile to estimate with: ``spec`` (a path, a profile name, or ``none``), else the matching one, else one
    carried over from the most similar measured device (:func:`transferred_profile`), else uncalibrated.

    A profile fitted on another device or engine is refused: its terms describe
    different hardware or software and would be wrong without saying so. The
    device figures the profile was fitted against are the ones used. The name a
    carried-over profile prints (``vllm-h200-bf16-on-h100-sxm``) is accepted as
    ``spec`` too, so a name copied from an output finds the same profile.
    """
    check_engine(engine)
    text = "" if spec is None else str(spec)
    if text.lower() == "none":
        return Profile.uncalibrated(device, engine, dtype)
    if spec is not None and (Path(text).expanduser().suffix.lower() == ".json" or Path(text).expanduser().exists()):
        profile = load_profile(Path(text).expanduser())
    else:
        profiles = available_profiles()
        stand_in = find_profile(engine, device.name, dtype, profiles) or transferred_profile(engine, device, dtype, profiles)
        if spec is None:
            return stand_in or Profile.uncalibrated(device, engine, dtype)
        matches = [p for p in profiles if p.name == text] or [p for p in (stand_in,) if p is not None and p.name == text]
        if not matches:
            known = ", ".join(sorted({p.name for p in profiles})) or "none"
            raise UserError(f"--profile {text!r}: no such profile file or name (known profiles: {known}; "
                            "calibrate one with `archscale bench calibrate --out FILE.json`)")
        profile = matches[0]
    where = profile.path or profile.name
    if profile.device.name != device.name:
        raise UserError(f"--profile {where}: fitted on {profile.device.name}, not {device.name}; a profile holds only for "
                        f"the device it was measured on (use --profile none for the uncalibrated roofline on {device.name})")
    if profile.engine != engine:
        raise UserError(f"--profile {where}: fitted for engine {profile.engine!r}, not {engine!r} (give --engine {profile.engine})")
    if profile.dtype != dtype:
        raise UserError(f"--profile {where}: fitted for {profile.dtype}, not {dtype}")
    return profile

