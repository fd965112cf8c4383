"""Fits that need no options: isoFLOP wings, more law forms (Farseer, Kaplan), degenerate candidates, honest warnings."""

import json

import numpy as np
import pandas as pd
import pytest

from archscale.fit.fitting import fit_law
from archscale.fit.runs import load_runs
from archscale.fit.selection import budgets, candidate_forms, default_split, select_form, wing_floors
from archscale.fit.study import run_study
from archscale.laws import get_law
from conftest import DATA
from helpers import one_line_error

WINGS = DATA / "synthetic_isoflops_wings.csv"  # a known law plus isoFLOP wings (experiments/validate/make_synthetic_isoflops.py)
KNOWN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # the law behind it


def _top_budget_error(study, frame: pd.DataFrame) -> float:
    """Max relative error on the top budget's runs at or above 5 tokens per parameter."""
    top = frame[(budgets(frame) >= budgets(frame).max() / 1.5) & (frame["D"] / frame["N"] >= 5)]
    predicted = study.fit.law.predict(study.fit.params, {c: top[c].to_numpy(float) for c in study.fit.law.columns})
    return float(np.max(np.abs(predicted / top["loss"].to_numpy(float) - 1)))


def test_isoflop_wings_are_left_out_by_default_and_the_top_budget_is_predicted(cli, tmp_path):
    out = tmp_path / "fit.json"
    result = cli("fit", WINGS, "--holdout", "C >= 5e20", "--out", out)
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    selection = document["form_selection"]
    assert selection["split"] == "budget" and "isoFLOP profiles" in selection["split_reason"]
    assert selection["floors"] == [None, 1.0, 5.0] and selection["min_tokens_per_param"] in (1.0, 5.0)
    assert document["hygiene"]["floor_chosen_by_selection"] and document["hygiene"]["dropped_undertrained"] > 0
    assert "split by budget C" in result.out and "min D/N" in result.out and "the floor form selection chose" in result.out
    assert document["metrics"]["holdout"]["max_rel_error"] < 0.03
    assert document["params"]["alpha"] == pytest.approx(KNOWN["alpha"], abs=0.03)


def test_the_previous_default_misses_the_top_budget_of_the_wing_study():
    """Split by size, no floor, the old forms: the fit bends towards the wings (what the default used to do)."""
    frame = load_runs(WINGS)
    train = frame[budgets(frame) < 5e20].reset_index(drop=True)
    forms = [(law, objective) for law in ("chinchilla", "chinchilla-tied") for objective in ("lsq", "huber")]
    old = select_form(train, forms, "size")
    fit = fit_law(get_law(old.law), {"N": train["N"].to_numpy(), "D": train["D"].to_numpy()}, train["loss"].to_numpy(),
                  old.objective)

    class Old:  # the shape _top_budget_error reads
        pass

    Old.fit = fit
    assert _top_budget_error(Old, frame) > 0.03
    assert _top_budget_error(run_study(frame, holdout="C >= 5e20"), frame) < 0.03


def test_the_chinchilla_isoflop_profiles_top_budget_within_three_percent_with_no_options():
    study = run_study(load_runs(DATA / "chinchilla_isoflops_epoch.csv"), holdout="C >= 2e21")
    assert study.form_selection.split == "budget"
    assert study.metrics["holdout"]["n"] == 8  # every top-budget run is above the chosen floor, and scored
    assert study.metrics["holdout"]["max_rel_error"] < 0.03


def test_a_floor_that_leaves_no_fold_fit_different_adds_no_rows(cli, tmp_path):
    """The only run below 1 token per parameter is among the largest, which every fold predicts and no fold fits:
    at either floor each candidate would fit the same runs and score the same, so the table lists it once."""
    rng = np.random.default_rng(0)
    rows = [dict(N=n, D=n * tpp) for n in np.geomspace(5e7, 2e9, 6) for tpp in (10, 20, 40)]
    rows.append(dict(N=2e9, D=1e9))  # D/N 0.5, at the top size
    frame = pd.DataFrame(rows)
    frame["loss"] = get_law("chinchilla").predict(KNOWN, frame) * (1 + rng.normal(0, 0.002, len(frame)))
    runs = tmp_path / "runs.csv"
    frame.to_csv(runs, index=False)
    table = load_runs(runs)
    assert wing_floors(table) == [None, 1.0, 5.0]
    selection = select_form(table, candidate_forms(table, "auto", "auto", False), "size", floors=wing_floors(table))
    assert {candidate.floor for candidate in selection.candidates} == {None}
    keys = [(candidate.law, candidate.objective) for candidate in selection.candidates]
    assert len(keys) == len(set(keys))
    result = cli("fit", runs)
    assert result.code == 0, result.err
    assert "min D/N" not in result.out and "scored on the runs with D/N >= 5 for every candidate" in result.out


def test_tables_without_wings_try_no_floor_and_split_by_size():
    frame = load_runs(DATA / "aspect_ratio_morph.csv")
    assert wing_floors(frame) == [None]
    assert default_split(frame)[0] == "size"
    assert default_split(load_runs(DATA / "chinchilla_epoch.csv"))[0] == "size"  # many budgets with one or two sizes


def test_farseer_and_kaplan_are_candidates_and_farseer_uses_log_least_squares():
    forms = candidate_forms(load_runs(DATA / "chinchilla_epoch.csv"), "auto", "auto", False)
    assert ("farseer", "log-lsq") in forms and ("farseer", "huber") not in forms
    assert {("kaplan", "lsq"), ("kaplan", "huber")} <= set(forms)


FARSEER_TRUTH = dict(a3=100.0, b3=0.5, gamma=-0.3, a2=20.0, b2=6.5, beta=-0.2, a1=0.03, b1=-1.4, alpha=0.1)


def farseer_runs(seed: int = 0) -> pd.DataFrame:
    """A grid of sizes and token counts from a Farseer law whose data exponent grows with N."""
    rng = np.random.default_rng(seed)
    n, tokens_per_param = np.meshgrid(np.geomspace(2e7, 3e9, 9), np.geomspace(5, 300, 6))
    frame = pd.DataFrame({"N": n.ravel(), "D": (n * tokens_per_param).ravel()})
    frame["loss"] = get_law("farseer").predict(FARSEER_TRUTH, frame) * np.exp(rng.normal(0, 0.001, len(frame)))
    return frame


def test_farseer_is_selected_on_runs_of_its_own_law_and_extrapolates():
    frame = farseer_runs()
    study = run_study(frame, holdout="N >= 1.5e9")
    assert study.fit.law.name == "farseer" and study.fit.objective == "log-lsq"
    assert study.metrics["holdout"]["max_rel_error"] < 0.005
    larger = pd.DataFrame({"N": [1e10], "D": [2e11]})
    truth = get_law("farseer").predict(FARSEER_TRUTH, larger)
    assert study.fit.law.predict(study.fit.params, larger) == pytest.approx(truth, rel=0.01)


def test_the_farseer_fit_maps_its_normalised_parameters_back_exactly():
    frame = farseer_runs()
    fit = fit_law(get_law("farseer"), {"N": frame["N"].to_numpy(), "D": frame["D"].to_numpy()},
                  frame["loss"].to_numpy(), "log-lsq")
    predicted = get_law("farseer").predict(fit.params, frame)  # natural units, as the fit JSON stores them
    assert np.max(np.abs(predicted / frame["loss"] - 1)) < 0.005


def test_kaplan_recovers_its_own_law():
    truth = dict(Nc=8.8e13, Dc=5.4e13, alpha_N=0.076, alpha_D=0.095)  # Kaplan et al. 2020's fit
    n, tokens_per_param = np.meshgrid(np.geomspace(1e7, 1e9, 6), np.geomspace(2, 200, 6))
    frame = pd.DataFrame({"N": n.ravel(), "D": (n * tokens_per_param).ravel()})
    frame["loss"] = get_law("kaplan").predict(truth, frame)
    fit = fit_law(get_law("kaplan"), {"N": frame["N"].to_numpy(), "D": frame["D"].to_numpy()}, frame["loss"].to_numpy(), "lsq")
    assert fit.params["alpha_N"] == pytest.approx(0.076, rel=0.01)
    assert fit.params["alpha_D"] == pytest.approx(0.095, rel=0.01)


def test_a_degenerate_candidate_is_marked_and_not_chosen(cli, tmp_path):
    """Runs with no irreducible loss: Chinchilla's E collapses on them, which the table says, and a sound form wins."""
    n, tokens_per_param = np.meshgrid(np.geomspace(2e7, 3e9, 7), np.geomspace(5, 200, 5))
    frame = pd.DataFrame({"N": n.ravel(), "D": (n * tokens_per_param).ravel()})
    frame["loss"] = 40 * frame["N"] ** -0.12 + 60 * frame["D"] ** -0.12
    runs = tmp_path / "runs.csv"
    frame.to_csv(runs, index=False)
    result = cli("fit", runs, "--json")
    assert result.code == 0, result.err
    selection = json.loads(result.out)["form_selection"]
    degenerate = [c for c in selection["candidates"] if c["degenerate"]]
    assert any(c["law"].startswith("chinchilla") and "E" in c["degenerate"] for c in degenerate)
    chosen = next(c for c in selection["candidates"]
                  if (c["law"], c["objective"]) == (selection["selected"]["law"], selection["selected"]["objective"]))
    assert not chosen["degenerate"]
    printed = cli("fit", runs)
    assert "degenerate: E collapsed" in printed.out


def test_when_no_form_extrapolates_the_fit_says_so_and_names_what_to_check(cli, tmp_path):
    frame = load_runs(DATA / "chinchilla_epoch.csv")
    frame.loc[frame["N"] >= 1.4e9, "loss"] *= 1.15  # the larger runs come from another setup
    runs = tmp_path / "runs.csv"
    frame.to_csv(runs, index=False)
    result = cli("fit", runs, "--json")
    assert result.code == 0, result.err
    warning = json.loads(result.out)["form_selection"]["warning"]
    assert "no candidate form predicts the larger runs within 3%" in warning and "--holdout" in warning
    assert "no candidate form predicts the larger runs" in cli("fit", runs).out


def test_a_holdout_that_matches_no_row_is_refused(cli):
    result = cli("fit", DATA / "aspect_ratio_morph.csv", "--holdout", "N >= 1e12")
    assert one_line_error(result) and "--holdout 'N >= 1e12': matches no rows" in result.err
    plan = cli("plan", DATA / "chinchilla_isoflops_epoch.csv", "--drop-unbracketed", "--holdout", "C >= 1e30")
    assert one_line_error(plan) and "--holdout 'C >= 1e30': matches no rows" in plan.err


def test_log_least_squares_is_an_objective_a_user_can_ask_for(cli):
    result = cli("fit", DATA / "chinchilla_epoch.csv", "--law", "chinchilla", "--loss", "log-lsq", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["objective"] == "log-lsq"
    bad = cli("fit", DATA / "chinchilla_epoch.csv", "--loss", "l1")
    assert one_line_error(bad) and "log-lsq" in bad.err


def test_the_fit_json_states_what_n_counts(cli):
    shipped = cli("fit", DATA / "aspect_ratio_morph.csv", "--law", "chinchilla", "--loss", "lsq", "--json")
    assert json.loads(shipped.out)["N_definition"]["kind"] == "unstated"
    stated = cli("fit", DATA / "aspect_ratio_morph.csv", "--law", "chinchilla", "--loss", "lsq", "--n-kind", "total", "--json")
    assert json.loads(stated.out)["N_definition"] == {"kind": "total",
                                                      "meaning": "every parameter, embeddings and output head included"}
    bad = cli("fit", DATA / "aspect_ratio_morph.csv", "--n-kind", "active")
    assert one_line_error(bad) and "--n-kind 'active'" in bad.err


def test_archscale_runs_count_non_embedding_parameters(cli, tmp_path):
    runs = tmp_path / "runs.csv"
    frame = farseer_runs().assign(recipe_hash="5f6fa607c46e")  # what archscale train writes beside N
    frame.to_csv(runs, index=False)
    result = cli("fit", runs, "--law", "chinchilla", "--loss", "lsq", "--json")
    assert json.loads(result.out)["N_definition"]["kind"] == "non-embedding"

