"""Laws: predictions, closed-form optima, the registry."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from archscale.io.errors import UserError
from archscale.laws import LAWS, factor_optimum, get_law, u_factor

PAPER_1B = dict(a0=2.697, a1=0.0974, a2=0.0078, b0=0.3870, b1=0.0063, b2=0.0065)


def test_every_law_has_a_start_grid_and_predicts_finite_values():
    data = {"N": np.array([1e8, 1e9]), "D": np.array([2e9, 2e10]), "R": np.array([64.0, 128.0]),
            "x": np.array([0.06, 0.09]), "r": np.array([1.0, 3.0]), "gqa": np.array([1.0, 4.0]), "L_opt": np.array([3.0, 2.7]),
            "G": np.array([1.0, 8.0]), "N_active": np.array([3e7, 1e8]), "expansion": np.array([1.0, 8.0])}
    for law in LAWS.values():
        params = {p.name: p.grid[0] for p in law.params}
        assert np.all(np.isfinite(law.predict(params, data))), law.name


def test_u_factor_optimum_matches_numeric_minimisation():
    for c1, c2 in [(0.0974, 0.0078), (0.0063, 0.0065), (0.238, 0.0176), (0.3, 2.0)]:
        numeric = minimize_scalar(lambda v: u_factor(1.0, c1, c2, v), bounds=(1e-4, 100), method="bounded",
                                  options={"xatol": 1e-10}).x
        assert factor_optimum(c1, c2) == pytest.approx(numeric, rel=1e-4)


def test_no_interior_optimum_is_nan():
    assert np.isnan(factor_optimum(-0.1, 0.01))


def test_published_1b_fit_gives_the_papers_optimum():
    optimum = get_law("conditional-mult").optimum(PAPER_1B)
    assert optimum["x"] == pytest.approx(0.080, rel=0.01)
    assert optimum["r"] == pytest.approx(1.032, rel=0.01)


def test_multiplicative_law_optimum_is_where_the_2d_loss_is_lowest():
    law = get_law("conditional-mult")
    x, r = np.meshgrid(np.geomspace(0.02, 0.3, 400), np.geomspace(0.3, 8, 400))
    loss = law.predict(PAPER_1B, {"x": x.ravel(), "r": r.ravel(), "L_opt": np.full(x.size, 2.8)})
    best = np.argmin(loss)
    optimum = law.optimum(PAPER_1B)
    assert x.ravel()[best] == pytest.approx(optimum["x"], rel=0.01)
    assert r.ravel()[best] == pytest.approx(optimum["r"], rel=0.01)


def test_unknown_law_lists_known_ones():
    with pytest.raises(UserError, match="known laws: chinchilla"):
        get_law("hoffmann")
