"""The CPU MoE study's committed runs (experiments/results/cpu_moe_study/): what its write-up says they show.

The figures are what ``python experiments/studies/cpu_moe_study.py --analyse`` printed (summary.txt there); a change
to the fitter or the laws that moves them, better or worse, fails here and the write-up must be brought up to date.
"""

from __future__ import annotations

import sys

import pytest

from archscale.fit.runs import load_runs
from conftest import DATA

STUDY = DATA.parent / "experiments" / "studies"
RUNS = DATA.parent / "experiments" / "results" / "cpu_moe_study" / "runs.csv"
TOLERANCE = 0.005  # half a point of mean relative error
EXPECTED = {  # law -> (mean |error| on the 9 large MoE runs, max), as the write-up quotes them
    "chinchilla on N_active": (0.0845, 0.1798),
    "chinchilla on N": (0.0626, 0.1889),
    "moe-joint-fixed-exponents": (0.1271, 0.2533),
    "moe-joint": (0.0855, 0.1908),
}


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(STUDY))
    try:
        import cpu_moe_study

        yield cpu_moe_study
    finally:
        sys.path.remove(str(STUDY))


@pytest.fixture(scope="module")
def frame(study):
    return study.with_labels(load_runs(RUNS))


def test_the_study_has_every_size_expert_count_and_budget(frame):
    assert len(frame) == 24
    assert frame.groupby(["size", "E"]).size().to_dict() == {(s, e): 3 for s in ("M", "S") for e in (1, 2, 4, 8)}


def test_experts_cost_loss_at_the_large_size(study, frame):
    large = study.moe_gains(frame).query("size == 'M'")
    assert len(large) == 9 and (large["change"] > 0).all()
    assert large["change"].max() == pytest.approx(0.1506, abs=1e-3)


def test_no_law_fitted_on_the_other_runs_predicts_the_large_moe_runs(study, frame):
    lines, predictions, test = study.law_transfer(frame)
    assert int(test.sum()) == 9 and set(predictions) == set(EXPECTED)
    loss = frame.loc[test, "loss"].to_numpy()
    for label, (mean, worst) in EXPECTED.items():
        errors = abs(predictions[label] / loss - 1)
        assert errors.mean() == pytest.approx(mean, abs=TOLERANCE), label
        assert errors.max() == pytest.approx(worst, abs=TOLERANCE), label
        assert errors.mean() > 0.05  # the write-up's verdict: none predicts them


def test_fit_warns_that_no_form_predicts_the_held_out_moe_runs(cli, study, tmp_path):
    result = cli("fit", RUNS, "--holdout", study.HOLDOUT, "--out", tmp_path / "fit.json")
    assert result.code == 0, result.err
    assert "split by size N_active" in result.out
    assert "no candidate form predicts the larger runs within 3%" in " ".join(result.out.split())
