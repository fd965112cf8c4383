"""The runs table: formats, column mapping, derived columns, validation, atomic appends."""

import math
import multiprocessing
import re

import pandas as pd
import pytest

from archscale.io.errors import UserError
from archscale.fit.runs import append_run, load_runs, parse_column_map, read_runs
from conftest import DATA


def test_shipped_chinchilla_table_derives_tokens_from_flops():
    frame = load_runs(DATA / "chinchilla_epoch.csv")
    assert len(frame) == 245
    assert frame["D"].iloc[0] == pytest.approx(frame["C"].iloc[0] / (6 * frame["N"].iloc[0]))


def test_shape_columns_give_derived_descriptors(tmp_path):
    # LLaMA-3.2-1B's shape: r = 4.8, GQA 4, R = 128
    path = tmp_path / "runs.csv"
    pd.DataFrame([dict(N=973e6, D=1e11, loss=2.8, n_layers=16, d_model=2048, n_heads=32, n_kv_heads=8,
                       d_head=64, d_ff=8192, r=99.0)]).to_csv(path, index=False)
    row = load_runs(path).iloc[0]
    assert row["r"] == pytest.approx(4.8)  # the typed-in r=99 is replaced by the derived value
    assert row["gqa"] == 4
    assert row["R"] == 128
    assert row["x"] == pytest.approx(2048 / math.sqrt(973e6))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_reads_every_supported_format(tmp_path, suffix):
    frame = pd.DataFrame({"N": [1e8, 2e8], "D": [2e9, 4e9], "loss": [3.5, 3.2]})
    path = tmp_path / f"runs{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    assert load_runs(path)["loss"].tolist() == [3.5, 3.2]


def test_foreign_columns_map_with_col(tmp_path):
    path = tmp_path / "foreign.csv"
    pd.DataFrame({"Model Size": [1e8, 2e8], "Training FLOP": [6e17, 2.4e18], "loss": [3.0, 2.9]}).to_csv(path, index=False)
    frame = load_runs(path, parse_column_map(['N="Model Size"', "C=Training FLOP"]))
    assert frame["D"].tolist() == pytest.approx([1e9, 2e9])


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"N": [1e8, float("nan")], "D": [1e9, 1e9], "loss": [3.0, 3.0]}, "row 2, column 'N': value is missing"),
        ({"N": [1e8, 1e8], "D": [1e9, 0], "loss": [3.0, 3.0]}, "row 2, column 'D': must be > 0"),
        ({"N": [1e8, 1e8], "D": [1e9, 1e9], "loss": [3.0, -1]}, "row 2, column 'loss': must be > 0"),
        ({"N": [1e8], "D": [1e9], "loss": [3.0], "n_layers": [-2]}, "row 1, column 'n_layers'"),
        ({"N": [1e8], "loss": [3.0]}, "missing column 'D'"),
    ],
)
def test_bad_rows_name_file_row_and_column(tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(UserError, match=message) as excinfo:
        load_runs(path)
    assert str(path) in str(excinfo.value)


def test_bad_col_flag():
    with pytest.raises(UserError, match="--col"):
        parse_column_map(["Model Size"])
    with pytest.raises(UserError, match="not a runs-table column"):
        parse_column_map(["params=Model Size"])


def _append_many(path, worker, count):
    for i in range(count):
        append_run(path, {"N": 1e6 * (worker + 1), "D": 1e8 + i, "loss": 3.0, "worker": worker})


def test_concurrent_appends_lose_no_row(tmp_path):
    path = tmp_path / "runs.csv"
    procs = [multiprocessing.Process(target=_append_many, args=(path, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    frame = pd.read_csv(path)
    assert len(frame) == 45
    assert sorted(frame.groupby("worker").size().tolist()) == [15, 15, 15]
    assert not list(tmp_path.glob("*.tmp"))


def test_appends_keep_earlier_rows_as_written(tmp_path):
    """A recipe hash of digits and one 'e' reads as a number: appending must not rewrite it as one (it became inf)."""
    path = tmp_path / "runs.csv"
    append_run(path, {"N": 1e6, "D": 1e8, "loss": 3.0, "recipe_hash": "859e83011462"})
    append_run(path, {"N": 2e6, "D": 1e8, "loss": 2.9, "recipe_hash": "00000000e001"})
    append_run(path, {"N": 3e6, "D": 1e8, "loss": 2.8, "recipe_hash": "abc"})
    assert list(pd.read_csv(path, dtype=str)["recipe_hash"]) == ["859e83011462", "00000000e001", "abc"]
    assert load_runs(path)["N"].tolist() == [1e6, 2e6, 3e6]
    assert load_runs(path)["recipe_hash"].tolist() == ["859e83011462", "00000000e001", "abc"]  # read as text too


def test_a_hash_of_digits_is_read_as_text_in_every_format(tmp_path):
    """A digest that looks like a number (all digits, or digits around one 'e') would be read as one, and then match
    no run: search-gqa would find its finished proxies missing, and refuse."""
    hashes = ["012345678901", "12e456789012", "0a1b2c3d4e5f"]
    frame = pd.DataFrame({"N": [1e6] * 3, "D": [1e8] * 3, "loss": [3.0, 2.9, 2.8], "recipe_hash": hashes,
                          "data_hash": hashes[::-1]})
    frame.to_csv(tmp_path / "runs.csv", index=False)
    frame.to_json(tmp_path / "runs.jsonl", orient="records", lines=True)
    for name in ("runs.csv", "runs.jsonl"):
        table = load_runs(tmp_path / name)
        assert table["recipe_hash"].tolist() == hashes and table["data_hash"].tolist() == hashes[::-1], name


def test_a_table_under_the_old_config_hash_header_keeps_it(tmp_path):
    """Runs tables written before `config_hash` became `recipe_hash` (the mini-study's) are appended to under
    their own header, and a sweep still finds the recipes they hold."""
    from archscale.train.sweep import recorded_hashes

    path = tmp_path / "runs.csv"
    lines = (DATA.parent / "experiments" / "results" / "cpu_mini_study" / "runs.csv").read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")
    old_hashes = set(pd.read_csv(path, dtype=str)["config_hash"])
    assert recorded_hashes(path) == {(h, None) for h in old_hashes} and len(old_hashes) == 2
    row = pd.read_csv(path).iloc[0].to_dict()
    del row["config_hash"]
    append_run(path, {**row, "recipe_hash": "0123456789ab", "run_dir": "/r"})  # the row train writes now
    assert path.read_text().splitlines()[:3] == lines[:3]  # header and rows unchanged
    table = pd.read_csv(path, dtype=str)
    assert "recipe_hash" not in table.columns and table["config_hash"].iloc[-1] == "0123456789ab"
    assert recorded_hashes(path) == {(h, None) for h in old_hashes | {"0123456789ab"}}


def test_a_table_under_the_old_warmup_header_keeps_it(tmp_path):
    """`startup_steps`/`startup_s` (the first steps of a session, timed apart) were `warmup_steps`/`warmup_s`, which
    read as the recipe's learning-rate warm-up. Tables written before (the GQA and MoE studies') are appended to under
    their own header, and a run's old result.json reads under the new names."""
    from archscale.fit.runs import current_names

    path = tmp_path / "runs.csv"
    lines = (DATA.parent / "experiments" / "results" / "cpu_gqa_study" / "runs.csv").read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")
    row = pd.read_csv(path).iloc[0].to_dict()
    del row["warmup_steps"], row["warmup_s"]
    append_run(path, {**row, "startup_steps": 2, "startup_s": 7.5, "run_dir": "/r"})  # the row train writes now
    assert path.read_text().splitlines()[:3] == lines[:3]
    table = pd.read_csv(path)
    assert "startup_steps" not in table.columns
    assert (table["warmup_steps"].iloc[-1], table["warmup_s"].iloc[-1]) == (2, 7.5)
    assert current_names({"warmup_steps": 2, "warmup_s": 7.5}) == {"startup_steps": 2, "startup_s": 7.5}


def _damaged(path, damage: str) -> bytes:
    """A two-row runs table as ``train`` writes it, then damaged: its last row cut mid-row, a merge left
    unresolved, or NUL bytes where a crash left a hole."""
    for loss in (3.0, 2.9):
        append_run(path, {"N": 1e6, "D": 1e8, "loss": loss, "recipe_hash": "abc", "run_dir": "/runs/a", "seed": 0})
    header, first, second = path.read_text().splitlines(keepends=True)
    text = {"cut": header + first + second[:24],  # "1000000.0,100000000.0,2.": the loss cut, the rest gone
            "conflict": header + "<<<<<<< HEAD\n" + first + "=======\n" + second + ">>>>>>> theirs\n",
            "nul": header + first + second + "\0" * 12 + "\n"}[damage]
    path.write_text(text)
    return path.read_bytes()


DAMAGE = [("cut", "row 2 (line 3) has 3 of the header's 6 cells: it was cut short"),
          ("conflict", "line 2 is a git conflict marker ('<<<<<<< HEAD')"),
          ("nul", "row 3 (line 4) holds NUL bytes")]


@pytest.mark.parametrize("damage, message", DAMAGE, ids=[d for d, _ in DAMAGE])
def test_a_damaged_table_is_refused_by_readers_and_appenders(tmp_path, damage, message):
    """pandas reads all three as plausible rows (NaN cells); every reader and appender refuses them instead."""
    from archscale.fit.runs import check_appendable

    path = tmp_path / "runs.csv"
    before = _damaged(path, damage)
    for check in (load_runs, check_appendable):
        with pytest.raises(UserError, match=re.escape(message)) as excinfo:
            check(path)
        assert str(path) in str(excinfo.value)
    with pytest.raises(UserError, match=re.escape(message)):
        append_run(path, {"N": 2e6, "D": 1e8, "loss": 2.8, "recipe_hash": "def", "run_dir": "/runs/b", "seed": 0})
    assert path.read_bytes() == before


@pytest.mark.parametrize("value, fragment", [("abc", "not a number (got 'abc')"),
                                             ("-1", "must be a positive finite number (got -1.0)"),
                                             ("inf", "must be a positive finite number (got inf)"),
                                             ("", "value is missing (NaN)")])
def test_a_bad_training_flops_cell_names_its_row(tmp_path, value, fragment):
    """C names a run's isoFLOP budget. Text in it stopped fit and plan in a traceback, and one empty cell made plan
    drop the column for every run (6ND instead) without a word."""
    frame = pd.read_csv(DATA / "chinchilla_isoflops_epoch.csv", dtype=str)
    frame.loc[3, "C"] = value
    path = tmp_path / "isoflops.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match=re.escape("row 4, column 'C': ") + ".*" + re.escape(fragment)):
        load_runs(path)
    assert len(read_runs(path, drop_invalid=True).frame) == len(frame) - 1
