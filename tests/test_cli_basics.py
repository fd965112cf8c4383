import pytest


def test_version(cli):
    result = cli("--version")
    assert result.code == 0
    assert result.out.startswith("archscale ")


def test_unknown_verb_is_a_usage_error(cli):
    result = cli("no-such-verb")
    assert result.code == 2
    assert "Traceback" not in result.err


def test_sub_verbs_have_their_own_help(cli, monkeypatch):
    """`bench calibrate --help` lists calibrate's flags, not the whole of bench (issue 11)."""
    monkeypatch.setenv("COLUMNS", "200")
    calibrate = cli("bench", "calibrate", "--help")
    assert calibrate.code == 0 and "Usage: archscale bench calibrate" in calibrate.out
    assert "--holdout" in calibrate.out and "--batch-sizes" not in calibrate.out
    probe = cli("bench", "probe", "--help")
    assert probe.code == 0 and "--threads" in probe.out and "--holdout" not in probe.out
    bench = cli("bench", "--help")
    assert "--batch-sizes" in bench.out and "--holdout" not in bench.out


def test_flags_are_listed_without_a_value_type(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    for verb in (["fit"], ["search"], ["bench"], ["bench", "calibrate"], ["train"], ["data", "prepare"]):
        shown = cli(*verb, "--help")
        assert shown.code == 0 and "<bool>" not in shown.out, verb


def test_a_usage_error_is_one_line_naming_where_help_is(cli):
    result = cli("fit", "data/x.csv", "--no-such-flag")
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: No such option: --no-such-flag") and lines[0].endswith("(see archscale fit --help)")


def test_a_mistyped_flag_names_the_one_flag_it_is_closest_to(cli):
    typo = cli("fit", "data/x.csv", "--hodlout", "0.2")
    assert typo.code == 2 and "No such option: --hodlout; did you mean --holdout? (see archscale fit --help)" in typo.err
    assert "--plot" not in typo.err and "Possible options" not in typo.err  # Click's loose guesses, left out
    elsewhere = cli("search", "--holdout", "3")  # a real flag of other verbs: say which, not a near name here
    assert "did you mean" not in elsewhere.err and "--holdout is an option of archscale bench calibrate" in elsewhere.err


def test_jobs_dir_help_names_the_output_this_verb_has(cli, monkeypatch):
    """--jobs-dir sits beside --runs (sweep, search-gqa) or --store (bench); each help names the one its verb has."""
    monkeypatch.setenv("COLUMNS", "200")
    for verb, own, other in ((["sweep"], "--runs", "--store"), (["search-gqa"], "--runs", "--store"),
                             (["bench"], "--store", "--runs")):
        shown = cli(*verb, "--help")
        text = " ".join(shown.out.replace("│", " ").split())
        assert shown.code == 0 and f"(default: beside {own}, e.g." in text, verb
        assert f"beside {other}" not in text and f"{own} / {other}" not in text and f"{other} / {own}" not in text, verb


@pytest.mark.parametrize("count, shown", [(999.6e6, "1B"), (973e6, "973M"), (1.024e9, "1.02B"), (999.5e3, "1M"),
                                          (1.5e15, "1,500T"), (999.4, "999")])
def test_counts_round_into_the_next_unit_instead_of_printing_an_exponent(count, shown):
    from archscale.io.units import format_count

    assert format_count(count) == shown


def test_help_at_80_columns_shortens_no_flag_name():
    """At 80 columns the help showed `--experts-per-t…` and `--untie-embedd…`: flags a user could not read or copy."""
    import os
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "archscale", "search", "--help"], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80"}).stdout
    assert "…" not in shown
    lines = shown.splitlines()  # the long name folds onto the next line of its column: both parts are there
    at = next(i for i, line in enumerate(lines) if "--untie-embedd" in line)
    first = next(word for word in lines[at].split() if word.startswith("--untie-embedd"))
    rest = lines[at + 1].replace("│", " ").split()[0]
    assert first + rest == "--untie-embeddings"
