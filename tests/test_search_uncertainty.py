"""A fit's bootstrap refits carried into search: loss intervals for the picks, and a target met with a probability."""

import json

import pytest

from conftest import DATA

SEARCH = ["--n", "3e8", "--tokens", "6e9", "--layers", "12", "--head-dim", "64", "--gpu", "h100-sxm", "--top-k", "3"]


@pytest.fixture(scope="module")
def aspect_fit(tmp_path_factory):
    """The aspect law on the shipped runs, least squares, with 40 bootstrap refits."""
    from archscale.io.files import write_json
    from archscale.fit.runs import load_runs
    from archscale.fit.study import run_study

    path = tmp_path_factory.mktemp("fit") / "aspect.json"
    write_json(path, run_study(load_runs(DATA / "aspect_ratio_morph.csv"), "aspect", "lsq", bootstrap_samples=40).to_json())
    return path


def _search(cli, fit, *args):
    result = cli("search", "--fit", fit, *SEARCH, *args, "--json")
    return result, (json.loads(result.out) if result.code == 0 else None)


def test_the_picks_carry_the_interval_of_their_predicted_loss(cli, aspect_fit):
    result, document = _search(cli, aspect_fit, "--slack", "0.01")
    assert result.code == 0, result.err
    for pick in document["top_k"]:
        assert pick["loss_low"] < pick["predicted_loss"] < pick["loss_high"]
    table = cli("search", "--fit", aspect_fit, *SEARCH, "--slack", "0.01")
    assert "[" in table.out and "-" in table.out.split("[", 1)[1]


def test_a_target_met_with_probability_keeps_only_candidates_that_meet_it_under_most_refits(cli, aspect_fit):
    _, loose = _search(cli, aspect_fit, "--slack", "0.01")
    best = min(pick["predicted_loss"] for pick in loose["top_k"])
    target = str(round(best + 0.004, 4))  # within the refits' spread of the best picks
    # --tie 0: order by throughput alone, so the top picks compare the constraints, not the tie rule's loss order
    _, point = _search(cli, aspect_fit, "--target-loss", target, "--tie", "0")
    _, sure = _search(cli, aspect_fit, "--target-loss", target, "--confidence", "0.9", "--tie", "0")
    assert sure["n_feasible"] < point["n_feasible"]
    assert all(pick["p_meets_target"] >= 0.9 for pick in sure["top_k"])
    assert all(pick["predicted_loss"] <= float(target) for pick in sure["top_k"])
    # the confident choice gives up throughput for a loss the refits agree on
    assert sure["top_k"][0]["tokens_per_s"] <= point["top_k"][0]["tokens_per_s"]
    assert max(p["predicted_loss"] for p in sure["top_k"]) < max(p["predicted_loss"] for p in point["top_k"])


def test_confidence_needs_refits_and_a_probability(cli, tmp_path):
    fit = tmp_path / "aspect.json"
    assert cli("fit", DATA / "aspect_ratio_morph.csv", "--law", "aspect", "--loss", "lsq", "--out", fit).code == 0
    no_draws = cli("search", "--fit", fit, *SEARCH, "--confidence", "0.9")
    assert no_draws.code == 2 and "--bootstrap" in no_draws.err and len(no_draws.err.strip().splitlines()) == 1
    bad = cli("search", "--fit", fit, *SEARCH, "--confidence", "1.5")
    assert bad.code == 2 and "--confidence must be a probability" in bad.err


def test_confidence_one_keeps_only_candidates_every_refit_agrees_on(cli, aspect_fit):
    """1 is a share like any other (every refit must meet the target), not "not between 0 and 1"; 0 means nothing."""
    _, loose = _search(cli, aspect_fit, "--slack", "0.01")
    target = str(round(min(pick["predicted_loss"] for pick in loose["top_k"]) + 0.004, 4))
    result, every = _search(cli, aspect_fit, "--target-loss", target, "--confidence", "1", "--tie", "0")
    assert result.code == 0, result.err
    assert every["top_k"] and all(pick["p_meets_target"] == 1 for pick in every["top_k"])
    _, most = _search(cli, aspect_fit, "--target-loss", target, "--confidence", "0.9", "--tie", "0")
    assert every["n_feasible"] <= most["n_feasible"]
    zero = cli("search", "--fit", aspect_fit, *SEARCH, "--target-loss", target, "--confidence", "0")
    assert zero.code == 2 and "--confidence must be a probability in (0, 1]" in zero.err
    assert len(zero.err.strip().splitlines()) == 1


def test_a_low_confidence_never_admits_a_shape_whose_own_prediction_misses(cli, aspect_fit):
    """--confidence narrows the point search: at 0.05 a shape met by a few refits but missed by its own prediction
    was ranked, so the feasible set grew past the search without --confidence."""
    _, loose = _search(cli, aspect_fit, "--slack", "0.01")
    target = str(round(min(pick["predicted_loss"] for pick in loose["top_k"]) + 0.004, 4))
    _, point = _search(cli, aspect_fit, "--target-loss", target, "--tie", "0")
    _, low = _search(cli, aspect_fit, "--target-loss", target, "--confidence", "0.05", "--tie", "0")
    assert low["n_feasible"] <= point["n_feasible"]
    assert all(pick["predicted_loss"] <= float(target) for pick in low["top_k"])
