"""Fitting on real data (the acceptance numbers of the fit issue) and on synthetic data with known answers."""

import numpy as np
import pandas as pd
import pytest

from archscale.io.errors import UserError
from archscale.fit.fitting import fit_law
from archscale.laws import get_law
from archscale.fit.runs import load_runs
from archscale.fit.fitted import FittedLaw
from archscale.fit.study import run_study
from conftest import DATA

EPOCH_GRID_OBJECTIVE = 0.00102  # the replication's 4,500-start L-BFGS-B grid (REFERENCE.md section 2)


@pytest.fixture(scope="module")
def chinchilla_240():
    frame = load_runs(DATA / "chinchilla_epoch.csv")
    frame = frame[frame["loss"] < 3.42]
    assert len(frame) == 240  # the replication drops the 5 highest-loss points
    return frame


@pytest.fixture(scope="module")
def aspect_runs():
    return load_runs(DATA / "aspect_ratio_morph.csv")


def test_huber_chinchilla_matches_the_epoch_replication(chinchilla_240):
    fit = run_study(chinchilla_240, "chinchilla", objective="huber").fit
    p = fit.params
    assert abs(p["E"] - 1.817) <= 0.03
    assert abs(p["alpha"] - 0.348) <= 0.01
    assert abs(p["beta"] - 0.366) <= 0.015
    assert 285 <= p["A"] <= 744
    assert 1042 <= p["B"] <= 5810
    assert fit.objective_value <= EPOCH_GRID_OBJECTIVE


def test_least_squares_and_huber_differ_and_are_labelled(chinchilla_240):
    lsq = run_study(chinchilla_240, "chinchilla", objective="lsq").to_json()
    huber = run_study(chinchilla_240, "chinchilla", objective="huber").to_json()
    assert lsq["objective"] == "lsq" and huber["objective"] == "huber"
    assert abs(lsq["params"]["B"] - huber["params"]["B"]) > 1000  # visibly different answers on the same data


def test_aspect_law_predicts_and_ranks_the_1b_runs_where_chinchilla_does_not(aspect_runs):
    # the paper's Figure 5.8: fit on every run below 1B at 20N and 160N, test on the four 1B runs
    where = "tokens_budget in ['20N', '160N']"
    aspect = run_study(aspect_runs, "aspect", "lsq", where=where, holdout="N >= 1e9").metrics["holdout"]
    chinchilla = run_study(aspect_runs, "chinchilla", "lsq", where=where, holdout="N >= 1e9").metrics["holdout"]
    assert aspect["n"] == 4
    assert aspect["max_rel_error"] <= 0.012
    assert aspect["spearman"] == pytest.approx(1.0)
    assert chinchilla["spearman"] == pytest.approx(-0.4)
    assert 0.03 <= chinchilla["max_rel_error"] <= 0.04


def test_aspect_law_on_all_sub_1b_runs_still_ranks_1b_correctly(aspect_runs):
    holdout = run_study(aspect_runs, "aspect", "lsq", holdout="N >= 1e9").metrics["holdout"]
    assert holdout["spearman"] == pytest.approx(1.0)


PAPER_IN_UNIT_GAUGE = dict(a0=2.697 * 0.387, a1=0.0974 * 0.387, a2=0.0078 * 0.387,
                           b0=1.0, b1=0.0063 / 0.387, b2=0.0065 / 0.387)
REFERENCE = FittedLaw(get_law("chinchilla"), dict(E=1.8172, A=477.8, B=2143.4, alpha=0.3473, beta=0.3672))


def synthetic_runs(law_name, params, noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    rows = [dict(N=n, D=100 * n, x=x, r=r) for n in (8e7, 1.45e8, 2.97e8)
            for x in (0.04, 0.06, 0.08, 0.11, 0.15) for r in (0.5, 0.8, 1.2, 2.0, 3.5, 5.0)]
    frame = pd.DataFrame(rows)
    clean = get_law(law_name).predict(params, {"x": frame.x, "r": frame.r, "L_opt": REFERENCE.predict(frame)})
    frame["loss"] = clean * (1 + rng.normal(0, noise, len(frame)))
    return frame


def test_multiplicative_law_recovers_known_coefficients():
    frame = synthetic_runs("conditional-mult", PAPER_IN_UNIT_GAUGE)
    fit = run_study(frame, "conditional-mult", "lsq", reference=REFERENCE).fit
    for name, true in PAPER_IN_UNIT_GAUGE.items():
        assert fit.params[name] == pytest.approx(true, rel=0.12), name
    optimum = get_law("conditional-mult").optimum(fit.params)
    assert optimum["x"] == pytest.approx(0.080, rel=0.03)
    assert optimum["r"] == pytest.approx(1.032, rel=0.03)


def test_additive_law_recovers_known_coefficients():
    truth = dict(a0=0.12, a1=0.11, a2=0.0088, b1=0.048, b2=0.050)
    fit = run_study(synthetic_runs("conditional-add", truth), "conditional-add", "lsq", reference=REFERENCE).fit
    for name, true in truth.items():
        assert fit.params[name] == pytest.approx(true, rel=0.12), name


def test_empirical_reference_finds_the_same_optimum():
    frame = synthetic_runs("conditional-mult", PAPER_IN_UNIT_GAUGE)
    study = run_study(frame, "conditional-mult", "lsq")
    assert study.reference_kind == "empirical"
    assert study.fitted.optimum()["r"] == pytest.approx(1.032, rel=0.03)


def test_progressive_tasks_fit_small_and_test_the_next_size():
    study = run_study(synthetic_runs("conditional-mult", PAPER_IN_UNIT_GAUGE), "conditional-mult", "lsq",
                      reference=REFERENCE, progressive=True)
    assert [task["test_sizes"] for task in study.progressive] == [[1.45e8], [2.97e8]]
    assert all(task["metrics"]["spearman"] > 0.9 for task in study.progressive)


def test_fixed_parameter_is_held():
    frame = synthetic_runs("conditional-mult", PAPER_IN_UNIT_GAUGE)
    fit = run_study(frame, "conditional-mult", "lsq", reference=REFERENCE, fixed={"b0": 0.387}).fit
    assert fit.params["b0"] == 0.387
    assert fit.params["a0"] == pytest.approx(2.697, rel=0.12)  # the paper's own gauge comes back


def test_constant_tokens_per_parameter_is_refused():
    n = np.geomspace(1e7, 1e10, 20)
    with pytest.raises(UserError, match="same tokens-per-parameter ratio"):
        fit_law(get_law("chinchilla"), {"N": n, "D": 20 * n}, 1.8 + 400 / n**0.34 + 400 / (20 * n) ** 0.28)


def test_poorly_identified_parameters_are_reported():
    # the multiplicative law with b0 left free has a scale degeneracy between its two factors
    frame = synthetic_runs("conditional-mult", PAPER_IN_UNIT_GAUGE)
    from archscale.laws.conditional import ConditionalMultiplicative

    free = ConditionalMultiplicative()
    free.default_fixed = {}
    fit = fit_law(free, {"x": frame.x.values, "r": frame.r.values, "L_opt": REFERENCE.predict(frame)},
                  frame.loss.values, n_polish=2)
    assert fit.warnings and "poorly identified" in fit.warnings[0]


def test_bootstrap_interval_contains_the_estimate(chinchilla_240):
    fit = run_study(chinchilla_240, "chinchilla", objective="huber", bootstrap_samples=12).fit
    for name, (low, high) in fit.ci.items():
        assert low <= fit.params[name] * 1.05 and high >= fit.params[name] * 0.95, name
