"""``archscale fit`` / ``predict`` as a user meets them, failure modes included."""

import json

import pandas as pd
import pytest

from conftest import DATA


def test_fit_writes_json_and_plot(cli, tmp_path):
    out, plot = tmp_path / "fit.json", tmp_path / "fit.png"
    result = cli("fit", DATA / "chinchilla_epoch.csv", "--law", "chinchilla", "--loss", "huber",
                 "--where", "loss < 3.42", "--out", out, "--plot", plot)
    assert result.code == 0, result.err
    assert "alpha" in result.out and "Spearman" in result.out
    document = json.loads(out.read_text())
    assert document["law"] == "chinchilla" and document["objective"] == "huber"
    assert document["n_points"] == 240
    assert set(document["metrics"]) == {"fit", "holdout"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_holdout_metrics_and_predict_roundtrip(cli, tmp_path):
    out = tmp_path / "aspect.json"
    result = cli("fit", DATA / "aspect_ratio_morph.csv", "--law", "aspect", "--holdout", "N>=1e9", "--out", out)
    assert result.code == 0, result.err
    holdout = json.loads(out.read_text())["metrics"]["holdout"]
    assert holdout["n"] == 4
    # four 1B runs within 0.04 of each other: R^2 is negative though every error is under 3%, and the text says why
    assert holdout["r2"] < 0 and holdout["max_rel_error"] < 0.03
    assert "note: R^2" in result.out and "on the holdout rows: their losses spread by" in " ".join(result.out.split())
    predicted = cli("predict", out, "--n", "1.44e9", "--tokens", "2.9e10", "--d-model", "2048", "--layers", "24", "--json")
    assert predicted.code == 0, predicted.err
    assert 2.7 < json.loads(predicted.out)["loss"] < 3.1


def test_fit_json_to_stdout(cli):
    result = cli("fit", DATA / "chinchilla_epoch.csv", "--json")
    assert result.code == 0
    document = json.loads(result.out)
    assert document["law"] == document["form_selection"]["selected"]["law"] and document["params"]


def test_conditional_fit_with_chinchilla_reference_and_predict(cli, tmp_path):
    reference = tmp_path / "chinchilla.json"
    assert cli("fit", DATA / "chinchilla_epoch.csv", "--law", "chinchilla", "--loss", "huber", "--where", "loss < 3.42",
               "--out", reference).code == 0
    rows = []
    for n in (8e7, 1.5e8, 3e8):
        for d_model, heads, d_ff in ((512, 16, 1536), (768, 12, 2048), (1024, 8, 2048), (768, 24, 1024), (640, 8, 2560)):
            rows.append(dict(N=n, D=100 * n, n_layers=12, d_model=d_model, n_heads=heads, n_kv_heads=4 if heads % 4 == 0 else heads,
                             d_head=64, d_ff=d_ff, loss=3.4 - 0.2 * (n / 1e8) ** 0.3 + 0.01 * abs(d_model - 768) / 256))
    runs = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(runs, index=False)
    out = tmp_path / "cond.json"
    result = cli("fit", runs, "--law", "conditional-mult", "--reference", reference, "--out", out, "--plot", tmp_path / "c.png")
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    assert document["reference"]["kind"] == "law" and document["reference"]["law"] == "chinchilla"
    assert set(document["params"]) == {"a0", "a1", "a2", "b0", "b1", "b2"}
    predicted = cli("predict", out, "--n", "1e9", "--tokens", "1e11", "--d-model", "2560", "--ratio", "1.07")
    assert predicted.code == 0, predicted.err
    assert "predicts loss" in predicted.out


def test_predict_with_published_fit_is_relative_without_l_opt(cli):
    """A published conditional fit has no reference law: predict gives L / L_opt (as search ranks), and says so."""
    fit = DATA / "fits" / "dissertation_1b_mult.json"
    without = cli("predict", fit, "--n", "1e9", "--tokens", "1e11", "--d-model", "2560", "--ratio", "1.07")
    assert without.code == 0, without.err
    assert "predicts L / L_opt = " in without.out and "give --l-opt" in without.out
    relative = json.loads(cli("predict", fit, "--n", "1e9", "--d-model", "2560", "--ratio", "1.07", "--json").out)
    assert relative["loss_units"] == "L / L_opt"
    with_l_opt = cli("predict", fit, "--n", "1e9", "--d-model", "2560", "--ratio", "1.07", "--l-opt", "2.8", "--json")
    assert with_l_opt.code == 0
    absolute = json.loads(with_l_opt.out)
    assert absolute["loss_units"] == "nats/token" and absolute["loss"] == pytest.approx(2.8 * relative["loss"])
    assert absolute["optimum"]["r"] == pytest.approx(1.032, rel=0.01)


def test_predict_past_the_fits_runs_says_it_is_an_extrapolation(cli):
    """Chinchilla at 70B / 1.4T from the replication's fit (runs up to 16.2B parameters, 318B tokens): the number is
    printed with a warning of how far past the runs it lies, as plan does; inside them, no warning."""
    fit = DATA.parent / "experiments" / "results" / "plan" / "chinchilla_huber.json"
    far = cli("predict", fit, "--n", "70B", "--tokens", "1.4T")
    assert far.code == 0, far.err
    text = " ".join(far.out.split())
    assert "warning: extrapolation past the fitted runs: parameters up to 7e+10, 4.33x the largest its runs had" in text
    assert "tokens up to 1.4e+12, 4.41x" in text
    assert json.loads(cli("predict", fit, "--n", "70B", "--tokens", "1.4T", "--json").out)["extrapolation"]
    near = cli("predict", fit, "--n", "1B", "--tokens", "20B")
    assert near.code == 0 and "extrapolation" not in near.out


def _write(tmp_path, rows):
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


GOOD = {"N": [1e8, 2e8, 4e8, 8e8, 1.6e9, 1e8, 4e8], "D": [2e9, 4e9, 8e9, 1.6e10, 3.2e10, 8e9, 4e9],
        "loss": [3.5, 3.3, 3.1, 2.95, 2.8, 3.3, 3.15]}


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: p / "missing.csv", [], "no such file"),
        (lambda p: _write(p, {"N": [1e8], "loss": [3.0]}), [], "missing column 'D'"),
        (lambda p: _write(p, {**GOOD, "loss": [3.5, float("nan"), 3.1, 2.95, 2.8, 3.3, 3.15]}), [], "row 2, column 'loss': value is missing"),
        (lambda p: _write(p, {**GOOD, "N": [1e8, 0, 4e8, 8e8, 1.6e9, 1e8, 4e8]}), [], "row 2, column 'N': must be > 0"),
        (lambda p: _write(p, {**GOOD, "D": [2e9, -4e9, 8e9, 1.6e10, 3.2e10, 8e9, 4e9]}), [], "row 2, column 'D': must be > 0"),
        (lambda p: _write(p, {k: v[:4] for k, v in GOOD.items()}), [], "4 runs cannot fit law chinchilla, which has 5 free parameters"),
        (lambda p: _write(p, GOOD), ["--max-evals", "2"], "did not converge"),
        (lambda p: _write(p, GOOD), ["--law", "aspect"], "needs column 'R'"),
        (lambda p: _write(p, GOOD), ["--law", "hoffmann"], "unknown law 'hoffmann'"),
        (lambda p: _write(p, GOOD), ["--holdout", "N >>> 3"], "--holdout 'N >>> 3': cannot evaluate"),
        (lambda p: _write(p, GOOD), ["--holdout", "N > 0"], "holds out every row"),
        (lambda p: _write(p, GOOD), ["--loss", "l1"], "--loss 'l1'"),
        (lambda p: _write(p, GOOD), ["--fix", "A=400"], "--fix A: A depends on the units"),
        (lambda p: _write(p, GOOD), ["--law", "chinchilla", "--reference", DATA / "fits" / "dissertation_1b_mult.json"], "--reference only applies"),
        (lambda p: _write(p, GOOD), ["--reference", DATA / "fits" / "dissertation_1b_mult.json"], "must be a chinchilla fit"),
        (lambda p: _write(p, {"N": [1e8 * 2**i for i in range(8)], "D": [2e9 * 2**i for i in range(8)],
                              "loss": [3.5 - 0.1 * i for i in range(8)]}), [], "same tokens-per-parameter ratio"),
    ],
)
def test_fit_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, make, args, message):
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    result = cli("fit", make(tmp_path), *args, "--out", out, "--plot", plot)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err
    assert not out.exists() and not plot.exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_predict_bad_input(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli("predict", bad, "--n", "1e9").code == 2
    fit = DATA / "fits" / "dissertation_1b_mult.json"
    result = cli("predict", fit, "--n", "1e9", "--l-opt", "2.8")
    assert result.code == 2 and "--d-model" in result.err


@pytest.mark.parametrize("args, fragment", [
    (("data/fits/krajewski2024_granularity.json", "--n", "1e9", "--tokens", "1e11"),
     "law moe-granularity is a Mixture-of-Experts law (it reads G)"),  # was a KeyError traceback
    (("data/fits/dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11", "--d-model", "2560", "--ratio", "1",
      "--gqa", "64"), "--gqa: law conditional-mult does not read it"),  # was echoed beside an unchanged loss
    (("experiments/results/plan/chinchilla_huber.json", "--n", "70B", "--tokens", "1.4T", "--d-model", "8192"),
     "--d-model: law chinchilla does not read it"),
])
def test_predict_refuses_what_the_law_cannot_use(cli, args, fragment):
    root = DATA.parent
    result = cli("predict", root / args[0], *args[1:])
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and fragment in result.err, result.err


def test_predict_says_when_the_shape_lies_outside_the_fits_runs(cli):
    """search would not rank a shape the law has not seen; predict prints its number, and says so."""
    fit = DATA / "fits" / "dissertation_1b_mult.json"
    outside = cli("predict", fit, "--n", "1e9", "--tokens", "1e11", "--d-model", "16", "--ratio", "20", "--json")
    notes = json.loads(outside.out)["extrapolation"]
    assert any("x 0.000506 (runs 0.042-0.34); r 20 (runs 0.5-4.2)" in note for note in notes)
    at_1b = cli("predict", fit, "--n", "1e9", "--tokens", "1e11", "--d-model", "2560", "--ratio", "1.07", "--json")
    notes = json.loads(at_1b.out)["extrapolation"]  # Panda-1B's shape is inside; 1B is 3.4x the runs' largest
    assert notes == ["extrapolation past the fitted runs: parameters up to 1e+09, 3.28x the largest its runs had "
                     "(3.05e+08); tokens up to 1e+11, 3.28x the largest its runs had (3.05e+10)"]
    inside = cli("predict", fit, "--n", "2e8", "--tokens", "2e10", "--d-model", "1131", "--ratio", "1.07", "--json")
    assert "extrapolation" not in json.loads(inside.out)


def test_an_image_given_as_a_fit_says_it_is_not_text(cli, tmp_path):
    """It printed the codec's complaint ('utf-8' codec can't decode byte 0x89) and not what file was expected."""
    image = tmp_path / "fit.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    result = cli("predict", image, "--n", "1e9", "--tokens", "1e11")
    assert result.code == 2 and "fit.png: is not text (a binary file, such as an image?); expected a JSON file" in result.err


def test_an_optimum_built_from_loose_parameters_says_the_runs_do_not_determine_it(cli):
    """The mini-study's fit printed x* = 6.385 as a finding, beside a warning that a1 and b1 (which set it) have
    standard errors above their values; one more run moved it to 1.424."""
    runs = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "runs.csv"
    loose = cli("fit", runs, "--law", "conditional-mult", "--loss", "lsq")
    printed = " ".join(loose.out.split())
    assert ("closed-form optimum: x* = 6.385, r* = 4.638 (x* outside the runs' x 0.0717-0.274, r* outside the runs' r "
            "0.429-4.5: an extrapolation; from a1, b1, whose standard errors exceed their values: these runs do not "
            "determine it)") in printed
    tight = cli("fit", DATA / "chinchilla_epoch.csv", "--law", "chinchilla", "--where", "loss < 3.42")
    assert "do not determine it" not in tight.out


def test_an_optimum_outside_the_runs_is_called_an_extrapolation(cli):
    """x* = 6.385 lies far past the mini-study's x 0.07-0.27; fit and predict said it without a label."""
    fit = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "cond.json"
    predicted = cli("predict", fit, "--n", "2e6", "--tokens", "4e7", "--d-model", "256", "--ratio", "2")
    line = next(line for line in predicted.out.splitlines() if line.startswith("closed-form optimum"))
    assert line.endswith("(x* outside the runs' x 0.0717-0.274, r* outside the runs' r 0.429-4.5: an extrapolation)")
    document = json.loads(cli("predict", fit, "--n", "2e6", "--tokens", "4e7", "--d-model", "256", "--ratio", "2",
                              "--json").out)
    assert document["optimum_note"] == "x* outside the runs' x 0.0717-0.274, r* outside the runs' r 0.429-4.5: an extrapolation"
    inside = cli("predict", DATA / "fits" / "dissertation_1b_mult.json", "--n", "2e8", "--tokens", "2e10",
                 "--d-model", "1131", "--ratio", "1.07")
    assert inside.out.rstrip().endswith("closed-form optimum: x* = 0.08008, r* = 1.032")  # inside x 0.042-0.34, r 0.5-4.2
