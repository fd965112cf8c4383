"""How well real vLLM on this CPU agrees with itself: each CPU serving study measured again, in a later session,
with the same command, compared row by row with the committed measurements, beside the serving model's held-out
error on the same rows.

A serving model calibrated on one session's rows and scored on held-out shapes of the same session cannot be
expected to do better than the engine reproduces each shape: a shift of the whole session (the machine faster or
slower that day) it absorbs in its calibration, but what is left of the difference, shape by shape, it cannot
predict. And where two sessions order the shapes of a batch size differently, no model can rank them. This script
measures both instead of assuming them.

Inputs (each a study's export, written by the command in its folder's README):

* ``cpu_vllm_latency/cpu_vllm.csv`` and ``cpu_vllm_latency_retest/cpu_vllm.csv``: the ten ~20M dense shapes at batch
  1-32, 320 in / 32 out (``cpu_latency_validation.py``'s data, issue 21's TPOT and TTFT targets);
* ``cpu_vllm_latency_retest_quiet/cpu_vllm.csv``: the same ten shapes a third time, with the study's quiet-machine
  protocol (no other job running), compared with each earlier session;
* ``cpu_vllm_latency_fresh/`` and ``cpu_vllm_latency_fresh_quiet/``: the ten fresh 30M dense shapes, first measured
  at a load of 1.5, then again with the quiet protocol;
* ``cpu_vllm_latency_third/`` and ``cpu_vllm_latency_third_retest/``: the ten third-set 10-layer shapes, both
  sessions with the quiet protocol;
* ``cpu_vllm_moe/`` and ``cpu_vllm_moe_retest/``: the eight MoE shapes of 13.0M active parameters;
* ``cpu_vllm_moe_fresh/`` and ``cpu_vllm_moe_fresh_retest/``: the six fresh MoE shapes
  (``cpu_moe_validation.py``'s data, issue 22's throughput and within-batch rank targets).

For each study, per column the validations score (output tokens/s, TPOT and TTFT p50 and p99): the median over rows
of |retest / committed - 1| (the same statistic as the model's median |error|), per batch size too, the same with
the session's shift at each batch size divided out (``less shift``), and the
Spearman rank correlation of the two sessions' values over the shapes of each batch size (the statistic of the
within-batch targets). Then the validation's own procedure (imported, not copied: its split, its fixed terms,
``--fit auto``), calibrated on the committed rows of one half and scored on the other half's committed rows and on
its retest rows, so the model's error and the engine's disagreement with itself are read side by side.

Prints and writes ``experiments/results/cpu_retest.txt``.

    python experiments/validate/cpu_retest.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

import cpu_latency_validation as latency
import cpu_moe_validation as moe
from archscale.serving.devices import GPU, load_gpu
from archscale.serving.estimate import latency_column

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "cpu_retest.txt"
KEY = ["name", "batch_size"]
COLUMNS = {"throughput": "output_tokens_per_s",
           **{f"{metric.upper()} p{statistic}": latency_column(metric, statistic)
              for metric in ("tpot", "ttft") for statistic in (50, 99)}}
"""Each measured column the validations score, by the name the report gives it."""


@dataclass(frozen=True)
class Study:
    """One committed study, its retest, and the validation procedure that scores the serving model on it."""

    label: str
    committed: Path
    retest: Path
    device: Path
    halves: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]
    fixed: dict
    """Terms the study's validation holds fixed (the rest chosen by ``--fit auto``)."""


STUDIES = (
    Study("dense, ten ~20M shapes (issue 21: TPOT p50 <= 10%, TTFT p50 <= 20%)",
          latency.DATA, latency.RETEST, latency.DEVICE, latency.halves, latency.FIXED),
    Study("dense, a third session on a quiet machine, against the first",
          latency.DATA, latency.RETEST_QUIET, latency.DEVICE, latency.halves, latency.FIXED),
    Study("dense, the third session (quiet machine) against the second (no other job either)",
          latency.RETEST, latency.RETEST_QUIET, latency.DEVICE, latency.halves, latency.FIXED),
    Study("dense fresh, ten 30M 8-layer shapes: the second session (quiet protocol) against the first (loaded)",
          latency.FRESH, latency.FRESH_QUIET, latency.DEVICE, latency.halves, latency.FIXED),
    Study("dense third set, ten 30M 10-layer shapes: a second session (quiet protocol) against the first",
          latency.THIRD, latency.THIRD_RETEST, latency.DEVICE, latency.halves, latency.FIXED),
    Study("dense fifth set, ten 30M 14-layer shapes: a second session (quiet protocol) against the first",
          latency.FIFTH, latency.FIFTH_RETEST, latency.DEVICE, latency.halves, latency.FIXED),
    Study("MoE, eight 13.0M-active shapes (issue 22: throughput <= 15%, within-batch Spearman >= 0.8)",
          moe.DATA, moe.RETEST, moe.DEVICE, moe.halves,
          moe.PROCEDURES["the validation"]),
    Study("MoE fresh, six 22.8M-active shapes (as above)",
          moe.FRESH, moe.FRESH_RETEST, moe.DEVICE, moe.halves,
          moe.PROCEDURES["the validation"]),
)


def paired(committed: pd.DataFrame, retest: pd.DataFrame) -> pd.DataFrame:
    """The rows measured in both sessions, one per (shape, batch size), with ``<column>`` and ``<column>_retest``."""
    columns = KEY + list(COLUMNS.values())
    both = committed[columns].merge(retest[columns], on=KEY, suffixes=("", "_retest"), validate="one_to_one")
    measured = [c for c in both.columns if c not in KEY]
    return both.assign(**{c: pd.to_numeric(both[c]) for c in measured})


def ratio_error(reference: pd.Series, other: pd.Series) -> pd.Series:
    """|other / reference - 1|, the statistic of every median |error| here."""
    return (other.astype(float) / reference.astype(float) - 1.0).abs()


def within_batch_spearman(frame: pd.DataFrame, first: str, second: str) -> dict[int, float]:
    """Spearman of two columns over the shapes of each batch size."""
    return {int(batch): float(spearmanr(group[first], group[second]).statistic)
            for batch, group in frame.groupby("batch_size") if len(group) > 2}


def agreement_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per column: median |retest / committed - 1| over all rows and per batch size; the same after dividing out
    the session's shift (the median retest / committed ratio at each batch size), which is what a validation inside
    one session sees, since its calibration absorbs a shift common to every shape; and the within-batch Spearman of
    the two sessions (per batch size and the mean over batch sizes)."""
    table = {}
    for label, column in COLUMNS.items():
        error = ratio_error(pairs[column], pairs[f"{column}_retest"])
        ratio = pairs[f"{column}_retest"].astype(float) / pairs[column].astype(float)
        shape_part = (ratio / ratio.groupby(pairs["batch_size"]).transform("median") - 1.0).abs()
        row = {"median |diff| %": 100 * error.median(), "less shift %": 100 * shape_part.median()}
        row.update({f"b{int(b)} %": 100 * e.median() for b, e in error.groupby(pairs["batch_size"])})
        ranks = within_batch_spearman(pairs, column, f"{column}_retest")
        row["Spearman mean"] = np.mean(list(ranks.values()))
        row.update({f"rho b{b}": value for b, value in ranks.items()})
        table[label] = row
    return pd.DataFrame(table).T


def averaged(committed: pd.DataFrame, retest: pd.DataFrame) -> pd.DataFrame:
    """The committed rows with each scored column replaced by the mean of the two sessions (four timed repeats
    instead of two), for the rows measured in both."""
    pairs = paired(committed, retest)
    means = pairs[KEY].assign(**{c: (pairs[c] + pairs[f"{c}_retest"]) / 2 for c in COLUMNS.values()})
    return committed.drop(columns=list(COLUMNS.values())).merge(means, on=KEY, validate="one_to_one")


def model_split(fit_rows: pd.DataFrame, scored_rows: pd.DataFrame, study: Study, device: GPU, fit_half: np.ndarray,
                name: str, session: str) -> latency.Split:
    """The study's validation calibrated on the shapes of ``fit_half`` in ``fit_rows``, predicting the other shapes'
    rows of ``scored_rows`` (the calibration never sees them)."""
    fit_shapes = set(fit_rows.loc[fit_half, "name"])
    return latency.fit_then_predict(name, fit_rows[fit_rows["name"].isin(fit_shapes)],
                                    scored_rows[~scored_rows["name"].isin(fit_shapes)], device,
                                    latency.engine_settings(fit_rows), latency.AUTO, study.fixed,
                                    f"{study.committed.parent.name} half {name}, {session}")


def model_figures(split: latency.Split) -> dict[str, float]:
    """The model's held-out figures on one session: median |error| per column and the within-batch Spearman of
    throughput and of TPOT p50."""
    held = split.heldout
    figures = {"throughput": float(ratio_error(held["measured"], held["estimate"]).median())}
    figures.update({label: float(split.latency_error(column).median())
                    for label, column in COLUMNS.items() if label != "throughput"})
    throughput_ranks = within_batch_spearman(held, "estimate", "measured")
    tpot = latency_column("tpot", 50)
    tpot_ranks = within_batch_spearman(held, f"predicted_{tpot}", f"measured_{tpot}")
    figures["throughput Spearman"] = float(np.mean(list(throughput_ranks.values())))
    figures["TPOT p50 Spearman"] = float(np.mean(list(tpot_ranks.values())))
    return figures


def model_lines(committed: pd.DataFrame, retest: pd.DataFrame, study: Study, device: GPU) -> list[str]:
    """The model beside the engine: each half's profile on the other half, calibrated and scored on the committed
    session (the validation as committed), calibrated on it and scored on the retest (a profile used on another
    day), and calibrated and scored on the mean of both sessions."""
    mean = averaged(committed, retest)
    cases = {"committed -> committed": (committed, committed), "committed -> retest": (committed, retest),
             "mean of both -> mean of both": (mean, mean)}
    table = {}
    for case, (fit_rows, scored_rows) in cases.items():
        for name, fit_half in zip("AB", study.halves(fit_rows)):
            split = model_split(fit_rows, scored_rows, study, device, fit_half, name, case)
            table[f"fit half {name}: {case}"] = model_figures(split)
    frame = pd.DataFrame(table).T
    percent = [c for c in frame.columns if "Spearman" not in c]
    frame[percent] = 100 * frame[percent]
    return [f"  the serving model (the study's validation: fixed {study.fixed}, --fit auto), calibrated on one half's "
            "shapes in one session, scored on the other half's in a session; held-out median |error| % and "
            "within-batch Spearman (mean over batch sizes):",
            *("    " + line for line in frame.round(2).to_string().splitlines())]


def session_span(rows: pd.DataFrame) -> str:
    """When a session measured its rows: first to last timestamp, to the minute."""
    stamps = pd.to_datetime(rows["timestamp"], utc=True)
    return f"{stamps.min():%Y-%m-%d %H:%M}-{stamps.max():%H:%M}"


def floor_lines(agreement: pd.DataFrame) -> list[str]:
    """What the engine's disagreement with itself says of the targets. Part of a difference between sessions is a
    shift of the whole session (the machine faster or slower that day), which a profile calibrated and scored inside
    one session absorbs; the rest, each shape's own difference, is what a held-out error within a session cannot go
    below. Spearman is blind to the shift."""
    difference, shape_part = agreement["median |diff| %"], agreement["less shift %"]
    ranks = agreement["Spearman mean"]
    return ["  so: between sessions, " + ", ".join(f"{label} {difference[label]:.1f}% ({shape_part[label]:.1f}% less "
                                                  "the session's shift)" for label in difference.index)
            + f"; the two sessions order the shapes of a batch size with Spearman {ranks['throughput']:.2f} "
            f"(throughput) and {ranks['TPOT p50']:.2f} (TPOT p50), batch 1 {agreement.loc['throughput', 'rho b1']:.2f} / "
            f"{agreement.loc['TPOT p50', 'rho b1']:.2f}"]


def study_lines(study: Study) -> list[str]:
    """One study: what was compared, the engine against itself, the model against each session."""
    if not study.retest.exists():
        return [study.label, f"  {study.retest} not measured (its folder's README has the command)"]
    committed, retest = latency.vllm_rows(study.committed), latency.vllm_rows(study.retest)
    pairs = paired(committed, retest)
    dtypes = sorted(set(committed["dtype"]))
    device = load_gpu("cpu", study.device if study.device.exists() else latency.device_file(dtypes[0]))
    agreement = agreement_table(pairs)
    return [study.label,
            f"  {len(pairs)} rows in both sessions ({pairs['name'].nunique()} shapes, batch "
            f"{', '.join(map(str, sorted(pairs['batch_size'].unique())))}); committed "
            f"{session_span(committed)}, retest {session_span(retest)} (UTC)",
            "  the engine against itself: median |retest / committed - 1| % (all rows, per batch size) and the "
            "Spearman of the two sessions over the shapes of each batch size:",
            *("    " + line for line in agreement.round(2).to_string().splitlines()),
            *floor_lines(agreement),
            *model_lines(committed, retest, study, device)]


def main() -> None:
    lines = [f"real vLLM on this CPU, each study measured twice (committed and retest), {len(STUDIES)} studies", ""]
    for study in STUDIES:
        lines += [*study_lines(study), ""]
    text = "\n".join(lines)
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
