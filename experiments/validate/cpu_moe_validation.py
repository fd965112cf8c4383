"""Validate the MoE serving model on real vLLM on this CPU: calibrate on half the MoE shapes, predict the other half.

Input: ``experiments/results/cpu_vllm_moe/cpu_vllm_moe.csv``, written by ``python experiments/studies/cpu_vllm_moe.py``
(eight Mixtral-style shapes of 13.0M active parameters, E 4-16, k 1-4, granularity 1-4, each measured with real
vLLM at batch 1, 4, 16 and 32), and ``cpu_device.json`` in the same folder: this CPU at one thread in the rows'
dtype, probed as ``cpu_latency_validation.py`` probes it (fastest of three; written if missing).

The split: shapes sorted by (E, k), every other one in half A, so both halves span E 4-16 and k 1-4. A vLLM CPU
profile is calibrated on one half with the dense CPU validations' machinery (imported, not copied):
:func:`archscale.bench.calibrate.calibrate` with ``--fit auto`` (the terms chosen by leave-one-shape-out error on
the fitting half alone), fitting the median TPOT and TTFT with the throughput, with the engine settings vLLM ran
with (``cpu_latency_validation.engine_settings``). Then the other half is predicted, and the halves swap. Nothing
is tuned on a held-out half. Two procedures, both fixed before these rows were measured (:data:`PROCEDURES`):

* **the validation**: the weight-read efficiency fixed at the probe's copy bandwidth (the MoE term is weight
  bytes, so they are read at the measured rate), everything else left to ``--fit auto``. The compute efficiency
  is not fixed because ``cpu_vllm_latency/`` measured on this CPU that vLLM's prefill reaches 51-74% of the probe's
  matmul rate, so fixing it at 1 under-predicts every TTFT (its README, "why" 1);
* **the dense procedure** (``cpu_profile_validation.FIXED``: compute and weight-read efficiencies both fixed),
  printed beside it for comparison.

Prints and writes ``validation.txt`` beside the data: per split the terms chosen, the held-out median |error| of
throughput, the Spearman rank correlation over the held-out rows and of the held-out shapes within each batch size
(mean over batch sizes), the TPOT and TTFT errors; then every held-out row beside what the serving model's MoE
term says of it (the distinct experts a decode step reads per layer); then the verdict against issue 22's targets
(held-out median |error| <= 15% and within-batch Spearman >= 0.8, on both halves).

    python experiments/validate/cpu_moe_validation.py
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

import cpu_latency_validation as latency
from archscale.bench.calibrate import AUTO
from archscale.io.units import BYTES_PER_ELEMENT
from archscale.search.constrained import within_tie
from archscale.serving.devices import GPU, load_gpu
import archscale.serving.estimate as estimate_module
from archscale.serving.estimate import expected_distinct_experts
from cpu_profile_validation import FIXED, score

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu_vllm_moe"
DATA, DEVICE = RESULTS / "cpu_vllm_moe.csv", RESULTS / "cpu_device.json"
FRESH = RESULTS.with_name("cpu_vllm_moe_fresh") / "cpu_vllm_moe.csv"
"""The fresh set (``cpu_vllm_moe.py --set fresh``): measured after the model was settled on the eight shapes here."""
RETEST = RESULTS.with_name("cpu_vllm_moe_retest") / "cpu_vllm_moe.csv"
FRESH_RETEST = RESULTS.with_name("cpu_vllm_moe_fresh_retest") / "cpu_vllm_moe.csv"
"""Both sets measured again in a later session with the same commands (``cpu_retest.py`` compares the sessions)."""
ENGINE = "vllm"
ROUTING = ["n_experts", "experts_per_token"]
TARGETS = {"median_abs_err": 0.15, "spearman_within_batch": 0.8}
"""Issue 22: the MoE serving model, calibrated on half the MoE shapes, predicts the other half."""
ABLATIONS = {"every expert read by every pass": lambda experts, k, tokens: np.where(experts > 1, experts, 0.0),
             "only k experts read by every pass": lambda experts, k, tokens: np.where(experts > 1, k, 0.0)}
"""Stand-ins for :func:`~archscale.serving.estimate.expected_distinct_experts`, to show what the term is worth."""
PROCEDURES = {"the validation": {"eta_weights": FIXED["eta_weights"]}, "the dense procedure": FIXED}
"""Terms held fixed in each procedure (the rest chosen by ``--fit auto``); the verdict is the first one's."""


def device_file(dtype: str) -> Path:
    """This CPU at one thread in ``dtype``: ``cpu_latency_validation.device_file``'s probe, kept in this folder."""
    with mock.patch.object(latency, "DEVICE", DEVICE):
        return latency.device_file(dtype)


def vllm_rows(path: Path = DATA) -> pd.DataFrame:
    """The ok vLLM rows of the study's export (``cpu_latency_validation.vllm_rows``, with this study's default)."""
    return latency.vllm_rows(path)


def halves(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the two halves: shapes sorted by (E, k), alternately assigned."""
    shapes = rows[ROUTING].drop_duplicates().sort_values(ROUTING)
    first = {tuple(shape) for shape in shapes.to_numpy()[::2]}
    in_first = rows[ROUTING].apply(tuple, axis=1).isin(first).to_numpy()
    return in_first, ~in_first


def validate(rows: pd.DataFrame, device: GPU, fixed: dict[str, float]) -> list[latency.Split]:
    """Calibrate on half A and predict half B, then the reverse; each held-out row with its predicted latencies."""
    settings = latency.engine_settings(rows)
    first, second = halves(rows)
    return [latency.heldout_split(name, rows, heldout, device, settings, AUTO, fixed, f"{DATA.name} half {name}")
            for name, heldout in (("A", second), ("B", first))]


def figures(split: latency.Split) -> dict:
    """The held-out figures the verdict and the test read: throughput error and rank correlations, latency errors."""
    throughput = score(split.result)
    return {**split.figures(), "median_abs_err": throughput["median_abs_err"],
            "spearman_rows": throughput["spearman_rows"],
            "spearman_within_batch": throughput["spearman_shapes_per_batch"],
            "uncalibrated_median_abs_err": throughput["uncalibrated_median_abs_err"]}


def spearman_per_batch(split: latency.Split) -> dict[int, float]:
    """Spearman of predicted and measured throughput over the held-out shapes at each batch size."""
    held = split.result.rows[split.result.rows["split"] == "heldout"]
    return {int(batch): float(spearmanr(group["estimate"], group["measured"]).statistic)
            for batch, group in held.groupby("batch_size")}


def ablation_lines(rows: pd.DataFrame, device: GPU) -> list[str]:
    """What the distinct-experts term is worth on these rows: the validation again, with each pass reading every
    expert, or only the k of one token (the active weights), instead of ``E (1 - (1 - k/E)^tokens)``; each variant
    calibrated on the fitting half as the validation is."""
    lines = []
    for label, read in ABLATIONS.items():
        with mock.patch.object(estimate_module, "expected_distinct_experts", read):
            splits = validate(rows, device, PROCEDURES["the validation"])
        shown = [figures(split) for split in splits]
        lines.append(f"  {label}: throughput median |error| "
                     + " / ".join(f"{100 * f['median_abs_err']:.1f}%" for f in shown)
                     + ", Spearman within a batch size " + " / ".join(f"{f['spearman_within_batch']:.2f}" for f in shown)
                     + ", TPOT p50 median |error| " + " / ".join(f"{100 * f['tpot_ms_p50']:.1f}%" for f in shown))
    return lines


def expert_bytes_lines(rows: pd.DataFrame) -> list[str]:
    """Measured TPOT against the routed-expert bytes a decode step reads, over all shapes, per batch size (no fit):
    the distinct experts the term says the batch touches, and every expert. The correlation says which hypothesis
    the engine follows; the slope says at what rate those bytes cost time beyond the rest of the step."""
    element = rows["dtype"].map(lambda d: BYTES_PER_ELEMENT.get(str(d), 2))
    per_expert = 3 * rows["d_model"] * rows["expert_d_ff"] * (rows["n_layers"] - rows["first_dense_layers"]) * element
    hypotheses = {"distinct experts": expected_distinct_experts(rows["n_experts"], rows["experts_per_token"],
                                                                rows["batch_size"]),
                  "every expert": rows["n_experts"].to_numpy(float)}
    lines = []
    for batch in sorted(rows["batch_size"].unique()):
        at = (rows["batch_size"] == batch).to_numpy()
        tpot = rows.loc[at, "tpot_ms_p50"].to_numpy(float)
        parts = []
        for label, experts in hypotheses.items():
            megabytes = (experts[at] * per_expert[at]).to_numpy(float) / 1e6
            if np.ptp(megabytes) == 0:
                parts.append(f"{label} {megabytes[0]:.0f} MB for every shape")
                continue
            slope = np.polyfit(megabytes, tpot, 1)[0]  # ms per MB
            rate = f"{1 / slope:.1f} GB/s" if slope > 0 else "no rise with the bytes"
            parts.append(f"{label} {megabytes.min():.0f}-{megabytes.max():.0f} MB, r {np.corrcoef(megabytes, tpot)[0, 1]:.2f}, "
                         f"{rate}")
        lines.append(f"  batch {batch}: TPOT p50 {tpot.min():.1f}-{tpot.max():.1f} ms; " + "; ".join(parts))
    return lines


def heldout_table(split: latency.Split) -> pd.DataFrame:
    """Every held-out row: measured and predicted output tokens/s, and the experts a decode step reads per layer."""
    held = split.result.rows[split.result.rows["split"] == "heldout"]
    return pd.DataFrame({
        "shape": held["arch_name"], "E": held["n_experts"], "k": held["experts_per_token"], "batch": held["batch_size"],
        "experts read per layer": expected_distinct_experts(held["n_experts"], held["experts_per_token"],
                                                            held["batch_size"]).round(1),
        "measured tok/s": held["measured"].round(0), "predicted tok/s": held["estimate"].round(0),
        "error %": (100 * (held["estimate"] / held["measured"] - 1)).round(1),
    }).sort_values(["batch", "E", "k"])


def split_report(split: latency.Split, retest: pd.DataFrame | None = None) -> list[str]:
    """One split: the latency report of cpu_latency_validation.py, the throughput figures, the pairs of shapes the
    model orders (checked against ``retest`` too, a later session's rows, where given), every held-out row."""
    f = figures(split)
    return [*latency.split_lines(split),
            f"  throughput, held out: median |error| {100 * f['median_abs_err']:.1f}% (uncalibrated roofline "
            f"{100 * f['uncalibrated_median_abs_err']:.0f}%), Spearman over rows {f['spearman_rows']:.3f}, "
            f"within a batch size (mean over batch sizes) {f['spearman_within_batch']:.3f}: "
            + ", ".join(f"batch {b} {value:.2f}" for b, value in spearman_per_batch(split).items()),
            pairs_line(split, retest),
            "  held-out rows:", *("    " + line for line in heldout_table(split).to_string(index=False).splitlines())]


def stated_error(split: latency.Split) -> float:
    """The profile's speedup error as a search would quote it, relative: leave-one-shape-out on the fitting rows only
    (no held-out row enters it). The search calls shapes whose estimates differ by less than this a tie."""
    return float(split.result.summary["leave_one_architecture_out"]["speedup_mean_abs_points"]) / 100


def ordered_pairs(split: latency.Split, retest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every pair of held-out shapes at one batch size: the faster by the model, whether the model orders them at all
    (the slower estimate below the faster's by more than :func:`stated_error`, the search's tie rule), and whether
    the measurement puts them in that order (and the retest session, where one is given), and whether the measured
    throughputs themselves differ by more than that error."""
    held = split.result.rows[split.result.rows["split"] == "heldout"]
    tolerance = stated_error(split)
    again = None if retest is None else retest.set_index(["name", "batch_size"])["output_tokens_per_s"]
    records = []
    for batch, group in held.groupby("batch_size"):
        shapes = list(group.sort_values("estimate", ascending=False).itertuples())
        for i, faster in enumerate(shapes):
            for slower in shapes[i + 1:]:
                record = {"batch": int(batch), "faster": faster.arch_name, "slower": slower.arch_name,
                          "ordered": not within_tie(slower.estimate, faster.estimate, tolerance),
                          "as_measured": bool(faster.measured > slower.measured),
                          "measured_apart": not within_tie(min(faster.measured, slower.measured),
                                                           max(faster.measured, slower.measured), tolerance)}
                if again is not None:
                    record["as_retested"] = bool(again[(faster.arch_name, batch)] > again[(slower.arch_name, batch)])
                records.append(record)
    return pd.DataFrame(records)


def pairs_line(split: latency.Split, retest: pd.DataFrame | None = None) -> str:
    """How many of the pairs the model orders come out in that order, per session; how many it calls a tie, and how
    many of those the measurement puts further apart than the stated error."""
    pairs = ordered_pairs(split, retest)
    ordered, ties = pairs[pairs["ordered"]], pairs[~pairs["ordered"]]
    per_batch = ", ".join(f"batch {batch} {int(group['as_measured'].sum())}/{len(group)}"
                          for batch, group in ordered.groupby("batch"))
    again = (f"; in the retest session {int(ordered['as_retested'].sum())} of {len(ordered)}"
             if "as_retested" in ordered else "")
    return (f"  pairs of held-out shapes the model orders at one batch size (estimates apart by more than its stated "
            f"speedup error, {100 * stated_error(split):.1f}%, leave-one-shape-out on the fitting rows: the search's "
            f"tie rule): {len(ordered)} of {len(pairs)}, {int(ordered['as_measured'].sum())} of them in the measured "
            f"order ({per_batch or 'none'}){again}; the other {len(ties)} it calls a tie, of which "
            f"{int(ties['measured_apart'].sum())} measured further apart than that")


def fresh_split(rows: pd.DataFrame, fresh: pd.DataFrame, device: GPU, fixed: dict[str, float]) -> latency.Split:
    """The profile calibrated on every row of ``rows`` (``--fit auto`` with ``fixed``), predicting ``fresh``."""
    return latency.fit_then_predict("A+B (all eight)", rows, fresh, device, latency.engine_settings(rows), AUTO, fixed,
                                    "all eight shapes, predicting the fresh set")


def fresh_lines(rows: pd.DataFrame, device: GPU) -> list[str]:
    """The profile calibrated on all eight shapes here (the validation's procedure) predicting the fresh set; and
    the same without the serial expert term, which was added after the eight shapes here were seen."""
    if not FRESH.exists():
        return [f"fresh set: {FRESH} not measured (python experiments/studies/cpu_vllm_moe.py --set fresh)"]
    fresh = vllm_rows(FRESH)
    split = fresh_split(rows, fresh, device, PROCEDURES["the validation"])
    f = figures(split)
    without = fresh_split(rows, fresh, device, {**PROCEDURES["the validation"], "t_expert_gb": 0.0})
    w = figures(without)
    halves_without = validate(rows, device, {**PROCEDURES["the validation"], "t_expert_gb": 0.0})
    return ["", f"the fresh set ({len(fresh)} rows, {fresh['name'].nunique()} shapes, measured after the model was settled; "
                f"d_model {int(fresh['d_model'].iloc[0])}, E {sorted(set(fresh['n_experts'].astype(int)))}, "
                f"k {sorted(set(fresh['experts_per_token'].astype(int)))}), predicted by the profile calibrated on all "
                "eight shapes above (the validation's procedure):",
            *split_report(split, retest_rows(FRESH_RETEST)),
            f"  without the serial expert term (t_expert_gb held at 0; terms {', '.join(w['terms'])}): throughput "
            f"median |error| {100 * w['median_abs_err']:.1f}%, Spearman within a batch size {w['spearman_within_batch']:.2f} "
            f"({', '.join(f'batch {b} {v:.2f}' for b, v in spearman_per_batch(without).items())}); TPOT p50 median |error| "
            f"{100 * w['tpot_ms_p50']:.1f}%",
            "  the same variant on the eight shapes' halves (A / B held out): Spearman within a batch size "
            + " / ".join(f"{figures(s)['spearman_within_batch']:.2f}" for s in halves_without)
            + ", throughput median |error| " + " / ".join(f"{100 * figures(s)['median_abs_err']:.1f}%" for s in halves_without),
            f"fresh set: throughput median |error| {100 * f['median_abs_err']:.1f}% against <= "
            f"{100 * TARGETS['median_abs_err']:.0f}%: {'met' if f['median_abs_err'] <= TARGETS['median_abs_err'] else 'NOT met'}; "
            f"Spearman within a batch size {f['spearman_within_batch']:.2f} against >= {TARGETS['spearman_within_batch']}; "
            + orders_verdict([split])]


def retest_rows(path: Path) -> pd.DataFrame | None:
    """A later session's rows of the same shapes, or None where it was not measured."""
    return vllm_rows(path) if path.exists() else None


def orders_verdict(splits: list[latency.Split]) -> str:
    """Of the pairs the model orders beyond its stated error, how many the measurement confirms, per split."""
    counts = []
    for split in splits:
        ordered = ordered_pairs(split).query("ordered")
        counts.append(f"{int(ordered['as_measured'].sum())} of {len(ordered)}")
    return f"pairs the model orders, in the measured order: {' / '.join(counts)}"


def verdict_lines(splits: list[latency.Split]) -> list[str]:
    """Each target on both held-out halves."""
    error = [figures(split)["median_abs_err"] for split in splits]
    ranking = [figures(split)["spearman_within_batch"] for split in splits]
    error_met = all(value <= TARGETS["median_abs_err"] for value in error)
    ranking_met = all(value >= TARGETS["spearman_within_batch"] for value in ranking)
    return [f"throughput median |error|: {' / '.join(f'{100 * v:.1f}%' for v in error)} (halves A / B) against "
            f"<= {100 * TARGETS['median_abs_err']:.0f}%: {'met' if error_met else 'NOT met'}",
            f"Spearman within a batch size: {' / '.join(f'{v:.2f}' for v in ranking)} (halves A / B) against "
            f">= {TARGETS['spearman_within_batch']}: {'met' if ranking_met else 'NOT met'}"]


def main() -> None:
    rows = vllm_rows(DATA)
    dtypes = sorted(set(rows["dtype"]))
    if len(dtypes) != 1:
        raise SystemExit(f"{DATA.name}: rows of several dtypes {dtypes}; validate one at a time")
    device = load_gpu("cpu", device_file(dtypes[0]))
    settings = latency.engine_settings(rows)
    lines = [f"{ENGINE} on this CPU ({len(rows)} rows, {rows['name'].nunique()} MoE shapes, {dtypes[0]}); engine: "
             f"max_num_seqs {settings.max_num_seqs}, prefill passes of {settings.prefill_chunk_tokens} tokens; device "
             f"{device.bf16_tflops * 1e3:.0f} GFLOP/s, {device.hbm_tb_s * 1e3:.1f} GB/s ({DEVICE.name})",
             "split: shapes sorted by (E, k), every other one in half A"]
    verdicts, kept_splits = [], {}
    retest = retest_rows(RETEST)
    for label, fixed in PROCEDURES.items():
        splits = kept_splits[label] = validate(rows, device, fixed)
        lines += ["", f"{label}: --fit auto, fixed {fixed}"]
        for split in splits:
            lines += split_report(split, retest)
        verdicts += [f"{label}, {line}" for line in verdict_lines(splits)]
    verdicts.append(f"the validation, {orders_verdict(kept_splits['the validation'])} (halves A / B)")
    lines += fresh_lines(rows, device)
    lines += ["", "the distinct-experts term against its alternatives (the validation's procedure; halves A / B):",
              *ablation_lines(rows, device), "",
              "measured decode steps against the routed-expert bytes they read (all shapes; correlation of TPOT p50 "
              "with the bytes, and the rate the slope implies):", *expert_bytes_lines(rows), "", *verdicts]
    text = "\n".join(lines)
    print(text)
    (RESULTS / "validation.txt").write_text(text + "\n")
    print(f"wrote {RESULTS / 'validation.txt'}")


if __name__ == "__main__":
    main()
