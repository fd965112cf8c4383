"""Issue 11's bad inputs, one test each: one line on stderr, exit 2, no traceback, nothing changed on disk.

Every test snapshots the whole scratch folder (each file's sha256 and mode)
before the command and compares after it: the inputs are byte-identical and
nothing was half-written, not even a lock file or an empty folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archscale.shapes.architecture import Architecture
from archscale.bench.records import NOISY_CV, make_record
from archscale.fit.runs import TRAINED_RUN_COLUMNS, append_run
from archscale.train.config import TrainConfig, write_config_dir
from archscale.shapes.hf_config import write_hf_config
from conftest import DATA
from helpers import write_config

TINY = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
TINY_TRAIN = TrainConfig(tokens=2048, seq_len=64, batch_size=8, micro_batch_size=4, lr_max=3e-3, warmup_steps=1,
                         eval_every=0, eval_tokens=1024, checkpoint_every=2, log_every=2)
FIT_1B = DATA / "fits" / "dissertation_1b_mult.json"
MINI_STUDY_FIT = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "cond.json"


# ---- helpers ----------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``root``: content hash (files) and mode, by relative path."""
    state = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        state[str(path.relative_to(root))] = (digest, mode)
    return state


def assert_refused(result, fragment: str) -> None:
    """One line on stderr starting 'error:', exit 2, no traceback, and the line says what is wrong."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2, (result.code, result.out, result.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out
    assert fragment in lines[0], lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A scratch folder as the working directory, with a runs table and the published 1B fit in it."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(DATA / "chinchilla_epoch.csv", tmp_path / "runs.csv")
    shutil.copy(FIT_1B, tmp_path / "fit1b.json")
    return tmp_path


@pytest.fixture
def refused(cli, work):
    """Run a command that must be refused; check the one line and that nothing under the folder changed."""
    def run(fragment: str, *args) -> None:
        before = snapshot(work)
        assert_refused(cli(*args), fragment)
        assert snapshot(work) == before
    return run


@pytest.fixture
def tiny_cfg(work, corpus_cache, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
    return write_config_dir(work / "tiny", TINY, TINY_TRAIN)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, corpus_cache):
    """A config folder with a finished run in it (trained once for the module; tests copy it)."""
    from archscale.train.loop import train

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
        config = write_config_dir(tmp_path_factory.mktemp("trained") / "tiny", TINY, TINY_TRAIN)
        train(config, device="cpu", progress=False)
    return config


@pytest.fixture
def tiny_run(work, trained_tiny):
    """``work/tiny`` with its finished ``run/``."""
    return shutil.copytree(trained_tiny, work / "tiny")


# ---- input data destroyed -------------------------------------------------------------
def test_fit_out_onto_its_runs_table(refused):
    refused("is one of this command's inputs", "fit", "runs.csv", "--out", "runs.csv")


def test_fit_plot_onto_its_runs_table(refused):
    refused("is one of this command's inputs", "fit", "runs.csv", "--plot", "runs.csv")


def test_fit_out_through_a_hard_link_to_its_input(refused, work):
    os.link(work / "runs.csv", work / "alias.json")
    refused("is one of this command's inputs", "fit", "runs.csv", "--out", "alias.json")


def test_fit_out_and_plot_on_one_path(refused):
    refused("--out and --plot are the same path", "fit", "runs.csv", "--out", "x.png", "--plot", "x.png")


def test_bench_export_onto_the_store_it_shows(refused, work):
    append_store(work / "store.sqlite")
    refused("is one of this command's inputs", "bench", "--show", "--store", "store.sqlite", "--export", "store.sqlite")


def test_bench_export_to_parquet_name(refused, work):
    append_store(work / "store.sqlite")
    refused("use a name ending in .csv", "bench", "--show", "--store", "store.sqlite", "--export", "x.parquet")


def test_bench_calibrate_save_onto_the_store(refused, work):
    append_store(work / "store.sqlite")
    refused("is one of this command's inputs", "bench", "calibrate", "--store", "store.sqlite", "--gpu", "h100-sxm",
            "--out", "store.sqlite")


def test_sweep_into_a_runs_table_of_another_schema(refused, tiny_cfg, work):
    configs = tiny_cfg.parent / "configs"
    shutil.copytree(tiny_cfg, configs / "a")
    refused("is not a runs table that train appends to", "sweep", configs, "--runs", "runs.csv", "--device", "cpu",
            "--no-progress")


def test_train_into_a_runs_table_of_another_schema(refused, tiny_cfg):
    refused("is not a runs table that train appends to", "train", tiny_cfg, "--runs", "runs.csv", "--device", "cpu",
            "--no-progress")


def test_train_runs_table_with_a_png_name(refused, tiny_cfg):
    refused("use a name ending in .csv", "train", tiny_cfg, "--runs", "fit.png", "--device", "cpu", "--no-progress")


def test_train_out_onto_its_config_dir(refused, tiny_cfg):
    refused("is one of this command's inputs", "train", tiny_cfg, "--out", tiny_cfg, "--device", "cpu", "--no-progress")


def test_export_onto_its_own_run(refused, tiny_run):
    refused("is one of this command's inputs", "export", tiny_run / "run", "--out", tiny_run / "run")


def test_data_prepare_into_the_folder_holding_its_corpus(refused, work):
    (work / "texts").mkdir()
    (work / "texts" / "a.txt").write_text("some text\n" * 200)
    refused("holds texts/a.txt, one of this command's inputs", "data", "prepare", "--corpus", "texts/a.txt",
            "--out", "texts")


# ---- late or missing checks ------------------------------------------------------------
def test_train_a_model_too_big_for_this_machine(refused, work, corpus_cache, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
    big = Architecture(48, 6144, 48, 8, 128, 24576, vocab_size=256, name="big")  # ~17B parameters
    write_config_dir(work / "big", big, TINY_TRAIN.replace(seq_len=256, micro_batch_size=8))
    refused("training needs at least", "train", "big", "--device", "cpu", "--no-progress")


def test_candidates_whose_enumeration_would_not_fit_in_memory(refused):
    refused("would build about", "candidates", "--n", "1e15", "--layers", "1", "--head-dim", "2")


def test_candidates_a_trillion_parameter_budget(refused):
    refused("more than the", "candidates", "--n", "1e12", "--layers", "16", "--head-dim", "64")


def test_bench_into_a_corrupt_store_measures_nothing(refused, work):
    write_config(work / "c", TINY)
    (work / "store.sqlite").write_bytes(b"this is not a database" * 100)
    refused("is not an SQLite results store", "bench", "c", "--backend", "torch", "--device", "cpu",
            "--batch-sizes", "1", "--input-len", "8", "--output-len", "4", "--repeats", "1", "--store", "store.sqlite",
            "--no-progress")


# ---- failures to write that are checked before any work ------------------------------------------------
def test_fit_out_under_a_missing_folder_chain(refused):
    refused("does not exist", "fit", "runs.csv", "--out", "nonexistent/dir/fit.json")


def test_fit_out_under_a_file(refused, work):
    (work / "notes.txt").write_text("mine\n")
    refused("notes.txt is a file, not a folder", "fit", "runs.csv", "--out", "notes.txt/fit.json")


def test_fit_out_onto_a_folder(refused, work):
    (work / "results").mkdir()
    refused("is a folder; give a file name", "fit", "runs.csv", "--out", "results")


def test_candidates_out_onto_a_folder(refused, work):
    (work / "cands.csv").mkdir()
    refused("is a folder", "candidates", "--n", "1e9", "--layers", "16", "--head-dim", "64", "--out", "cands.csv")


def test_search_emit_onto_a_file(refused, work):
    (work / "configs").write_text("mine\n")
    refused("exists and is a file", "search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16",
            "--head-dim", "64", "--emit", "configs")


def test_bench_store_onto_a_folder(refused, work):
    write_config(work / "c", TINY)
    (work / "store.sqlite").mkdir()
    refused("is a folder", "bench", "c", "--backend", "roofline", "--gpu", "h100-sxm", "--store", "store.sqlite")


def test_export_onto_a_file(refused, tiny_run, work):
    (work / "hf").write_text("mine\n")
    refused("exists and is a file", "export", tiny_run / "run", "--out", "hf")


def test_data_prepare_out_onto_a_file(refused, work):
    (work / "a.txt").write_text("some text\n" * 200)
    (work / "tokens").write_text("mine\n")
    refused("exists and is a file", "data", "prepare", "--corpus", "a.txt", "--out", "tokens")


def test_train_out_under_a_file(refused, tiny_cfg, work):
    (work / "runs").write_text("mine\n")
    refused("runs is a file, not a folder", "train", tiny_cfg, "--out", "runs/tiny", "--device", "cpu", "--no-progress")


# ---- accepted nonsense ------------------------------------------------------------------
def test_fit_names_n_for_a_text_value_when_d_comes_from_c(refused, work):
    pd.DataFrame({"N": [1e8, "abc", 3e8], "C": [6e17, 1.2e18, 1.8e18], "loss": [3.0, 2.9, 2.8]}).to_csv(
        work / "flops.csv", index=False)
    refused("row 2, column 'N': not a number (got 'abc')", "fit", "flops.csv")


def test_fit_infinite_loss_says_got_once(refused, work):
    (work / "inf.csv").write_text("N,D,loss\n1e8,2e9,3.0\n2e8,4e9,inf\n")
    result_fragment = "row 2, column 'loss': must be a finite number (got inf)"
    refused(result_fragment, "fit", "inf.csv")


def test_fit_duplicated_column(refused, work):
    (work / "dup.csv").write_text("N,D,loss,N\n1e8,2e9,3.0,5\n2e8,4e9,2.9,6\n")
    refused("column 'N' appears twice", "fit", "dup.csv")


def test_fit_two_columns_mapped_to_one(refused, work):
    (work / "two.csv").write_text("a,b,D,loss\n1e8,5,2e9,3.0\n2e8,6,4e9,2.9\n")
    refused("column 'N' appears twice", "fit", "two.csv", "--col", "N=a", "--col", "N=b")


@pytest.mark.parametrize("value, shown", [(80.5, "80.5"), ("abc", "'abc'"), (1e400, "inf")])
def test_arch_refuses_a_count_that_is_not_whole(refused, work, value, shown):
    config = write_hf_config(TINY)
    config["hidden_size"] = value
    (work / "config.json").write_text(json.dumps(config))
    refused(f"hidden_size must be a whole number, got {shown}", "arch", "config.json")


CONFIG_READERS = {  # every verb that reads a config.json reads it through one reader, with one set of rules
    "arch": ["arch", "cfg"],
    "train": ["train", "cfg", "--device", "cpu", "--no-progress"],
    "bench": ["bench", "cfg", "--backend", "roofline", "--gpu", "h100-sxm", "--store", "s.sqlite"],
    "search --match": ["search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16",
                       "--match", "cfg"],
}
BAD_FIELDS = [  # (field, value, the refusal): none may fall back to a default or be read as something else
    ("num_key_value_heads", 0, "num_key_value_heads must be a positive whole number, got 0"),
    ("head_dim", 0, "head_dim must be a positive whole number, got 0"),
    ("tie_word_embeddings", "false", "tie_word_embeddings must be true or false, got 'false'"),
    ("num_hidden_layers", -2, "num_hidden_layers must be a positive whole number, got -2"),
    ("vocab_size", "256", "vocab_size must be a whole number, got '256'"),
    ("num_key_value_heads", 3, "num_key_value_heads 3 does not divide num_attention_heads 4"),
    ("head_dim", 15, "head_dim 15 must be even (rotary embeddings rotate pairs of channels)"),
    ("rope_theta", -1, "rope_theta must be a positive number, got -1"),
    ("max_position_embeddings", "8k", "max_position_embeddings must be a whole number, got '8k'"),
]


@pytest.mark.parametrize("verb", CONFIG_READERS)
@pytest.mark.parametrize("field, value, message", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_a_config_field_of_the_wrong_type_or_out_of_range_is_refused_naming_file_and_field(
        refused, work, verb, field, value, message):
    config = write_hf_config(TINY)
    config[field] = value
    (work / "cfg").mkdir()
    (work / "cfg" / "config.json").write_text(json.dumps(config))
    refused(f"config.json: {message}", *CONFIG_READERS[verb])


@pytest.mark.parametrize("flag, value", [("--batch", "-3"), ("--tp", "0"), ("--context", "-1"), ("--input-len", "0"),
                                         ("--output-len", "0")])
def test_arch_checks_its_numbers_before_reading_any_shape(refused, flag, value):
    """A bad number is named by its flag before the configs are read (--batch -3 without --gpu was accepted)."""
    refused(f"'{flag}'", "arch", "missing/config.json", flag, value)


@pytest.mark.parametrize("flag, value, message", [
    ("--layers", "0", "Invalid value for '--layers'"),
    ("--head-dim", "15", "--head-dim 15 must be even (rotary embeddings rotate pairs of channels)"),
    ("--tolerance", "2", "--tolerance must be a fraction in [0, 1)"),
    ("--x-min", "0", "--x-min 0 and --x-max 0.2: need 0 < --x-min <= --x-max"),
    ("--r-max", "inf", "--r-max inf: must be a finite number (the range's bound)"),
    ("--d-multiple", "0", "Invalid value for '--d-multiple'"),
    ("--vocab", "0", "Invalid value for '--vocab'"),
])
def test_candidates_names_a_bad_number_by_its_flag_before_any_work(refused, work, flag, value, message):
    (work / "notes.txt").write_text("mine\n")
    base = {"--n": "1e9", "--layers": "16", "--head-dim": "64", flag: value}  # the flag under test replaces its default
    refused(message, "candidates", *(item for pair in base.items() for item in pair), "--out", "notes.txt/c.csv")


def test_predict_refuses_a_negative_reference_loss(refused):
    refused("--l-opt must be a positive number, got -1", "predict", "fit1b.json", "--n", "1e9", "--tokens", "1e11",
            "--d-model", "2560", "--ratio", "1.07", "--l-opt", "-1")


@pytest.mark.parametrize("block", ["params", "bootstrap"])
def test_predict_refuses_a_fit_with_a_nan_parameter(refused, work, block):
    fit = json.loads((work / "fit1b.json").read_text())
    if block == "params":
        fit["params"]["a0"] = float("nan")
    else:
        fit["bootstrap"] = {"names": list(fit["params"]), "draws": [list(fit["params"].values()), [float("nan")] * 6]}
    (work / "nan.json").write_text(json.dumps(fit))  # Python writes NaN, and reads it back, without complaint
    refused("a0 must be a finite number, got nan", "predict", "nan.json", "--n", "1e9", "--tokens", "1e11",
            "--d-model", "2560", "--ratio", "1.07")


def test_export_refuses_a_shape_transformers_cannot_load(refused, work, corpus_cache, monkeypatch):
    from archscale.train.loop import train

    monkeypatch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
    odd = Architecture(2, 80, 3, 1, 32, 96, vocab_size=256, name="odd")  # 80 % 3 != 0: transformers 5 refuses it
    train(write_config_dir(work / "odd", odd, TINY_TRAIN), device="cpu", progress=False)
    refused("hidden_size 80 is not a multiple of num_attention_heads 3, and transformers (and vLLM",
            "export", work / "odd" / "run", "--out", "hf")


def test_data_prepare_refuses_an_image_as_corpus(refused, work):
    (work / "fit.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    refused("is not text", "data", "prepare", "--corpus", "fit.png", "--out", "tokens")


def test_noisy_measurement_is_not_ok():
    workload = {"batch_size": 4, "input_len": 64, "output_len": 16, "repeats": 3, "tp": 1}
    noisy = make_record(TINY, "t", "torch", workload, {"gpu": "cpu", "tokens_per_s": 4417.0, "tokens_per_s_std": 3767.0})
    assert noisy["status"] == "noisy" and "85% of the mean" in noisy["error"]
    steady = make_record(TINY, "t", "vllm", workload, {"gpu": "cpu", "tokens_per_s": 4417.0,
                                                       "tokens_per_s_std": 0.9 * NOISY_CV * 4417.0})
    assert steady["status"] == "ok" and steady["error"] is None
    tolerated = make_record(TINY, "t", "torch", workload, {"gpu": "cpu", "tokens_per_s": 4417.0, "tokens_per_s_std": 3767.0},
                            max_noise=0.9)  # bench --max-noise 0.9: an 85% scatter is accepted
    assert tolerated["status"] == "ok"


@pytest.mark.parametrize("value", ["0", "-0.1", "inf", "nan"])
def test_bench_refuses_a_max_noise_that_is_not_a_positive_fraction(refused, work, value):
    refused("--max-noise must be a positive fraction", "bench", "llama-3.2-1b", "--backend", "torch", "--max-noise", value,
            "--store", "s.sqlite")
    assert not (work / "s.sqlite").exists()


def test_bench_table_shows_noisy_rows_and_search_ignores_them(cli, work):
    from archscale.bench.store import append, load_results

    workload = {"batch_size": 4, "input_len": 64, "output_len": 16, "repeats": 3, "tp": 1}
    append(work / "s.sqlite", [make_record(TINY, "t", "torch", workload,
                                           {"gpu": "cpu", "tokens_per_s": 4417.0, "tokens_per_s_std": 3767.0})])
    shown = cli("bench", "--show", "--store", "s.sqlite")
    assert shown.code == 0 and "noisy: repeats disagree" in shown.out
    assert load_results(work / "s.sqlite", measured_only=True).empty


SEARCH_TINY = ("search", "--fit", str(MINI_STUDY_FIT), "--n", "2e5", "--tokens", "1.5e6", "--layers", "4",
               "--head-dim", "16", "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1,2",
               "--batch", "8", "--input-len", "64", "--output-len", "16", "--slack", "0.05",
               "--no-strict-hf")  # three picks to emit; only one of these shapes loads in transformers


def test_search_emit_replaces_an_earlier_set_without_stale_configs(cli, work):
    assert cli(*SEARCH_TINY, "--top-k", "3", "--emit", "configs").code == 0
    assert sorted(p.name for p in (work / "configs").iterdir()) == ["cand-01", "cand-02", "cand-03"]
    result = cli(*SEARCH_TINY, "--top-k", "1", "--emit", "configs")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (work / "configs").iterdir()) == ["cand-01"]


def test_search_emit_refuses_a_folder_holding_a_trained_run(refused, cli, work):
    assert cli(*SEARCH_TINY, "--top-k", "2", "--emit", "configs").code == 0
    (work / "configs" / "cand-02" / "run").mkdir()
    (work / "configs" / "cand-02" / "run" / "checkpoint.pt").write_bytes(b"weights")
    refused("holds cand-02/run", *SEARCH_TINY, "--top-k", "1", "--emit", "configs")


def test_search_says_when_fewer_shapes_than_top_k_meet_the_target(cli, work):
    result = cli(*SEARCH_TINY, "--top-k", "50", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    found = len(document["top_k"])
    assert found < 50
    assert any(f"only {found} distinct shapes meet the target loss, fewer than the 50 asked for" in note
               for note in document["notes"])


# ---- files: modes and locks -----------------------------------------------------------------------
def test_outputs_get_the_umask_mode_and_no_lock_is_left(cli, work):
    previous = os.umask(0o002)
    try:
        assert cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", "fit.json").code == 0
        assert stat.S_IMODE((work / "fit.json").stat().st_mode) == 0o664
        row = {name: 1 for name in TRAINED_RUN_COLUMNS}
        append_run(work / "team" / "runs.csv", row)
        os.chmod(work / "team" / "runs.csv", 0o644)
        append_run(work / "team" / "runs.csv", {**row, "loss": 2})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((work / "team" / "runs.csv").stat().st_mode) == 0o644  # a replaced file keeps its mode
    assert sorted(p.name for p in (work / "team").iterdir()) == ["runs.csv"]  # no .lock, no temporary
    assert not list(work.glob("*.lock"))


def test_append_keeps_old_rows_byte_identical(work):
    path = work / "mine.csv"
    row = {name: 1 for name in TRAINED_RUN_COLUMNS}
    append_run(path, {**row, "loss": 2.123456789012345, "mfu": None})
    before = path.read_bytes()
    append_run(path, {**row, "loss": np.float64(3.5)})
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 3
    frame = pd.read_csv(path)
    assert frame["loss"].tolist() == [2.123456789012345, 3.5] and frame["N"].dtype == np.int64


def test_append_to_a_hand_made_table_of_runs_columns_adds_the_missing_ones(work):
    path = work / "mine.csv"
    path.write_text("N,D,loss,d_model\n100,2000,3.5,64\n")
    append_run(path, {name: 1 for name in TRAINED_RUN_COLUMNS})
    lines = path.read_text().splitlines()
    added = [c for c in TRAINED_RUN_COLUMNS if c not in ("N", "D", "loss", "d_model")]
    assert lines[0].split(",") == ["N", "D", "loss", "d_model", *added]
    assert lines[1] == "100,2000,3.5,64" + "," * len(added)
    frame = pd.read_csv(path)
    assert len(frame) == 2 and frame["N"].dtype == np.int64 and frame["loss"].tolist() == [3.5, 1.0]


def test_fit_out_in_one_missing_folder_is_created_and_said(cli, work):
    result = cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", "results/fit.json")
    assert result.code == 0 and (work / "results" / "fit.json").is_file()
    assert "note: created folder results for --out" in result.err


def test_one_created_folder_for_two_outputs_is_one_note(cli, work):
    result = cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", "results/fit.json", "--plot", "results/fit.png")
    assert result.code == 0 and (work / "results" / "fit.png").is_file()
    notes = [line for line in result.err.splitlines() if line.startswith("note: created folder")]
    assert notes == ["note: created folder results for --out and --plot"]


# ---- data for the tests above ---------------------------------------------------------------------
def append_store(path: Path) -> None:
    from archscale.bench.store import append

    workload = {"batch_size": 4, "input_len": 64, "output_len": 16, "repeats": 3, "tp": 1}
    append(path, [make_record(TINY, "t", "torch", workload, {"gpu": "cpu", "tokens_per_s": 4417.0})])


# ---- every verb that writes: an output onto an input, under a file, of the wrong kind -------------------------
# (verb, its arguments with OUT where the output goes, the output's file ending or "" for a folder, the input it may
# not overwrite).
# `arch` and `predict` write nothing; `bench --show --export` and the runs tables are covered above.
WRITERS = {
    "fit": (["fit", "runs.csv", "--out", "OUT"], ".json", "runs.csv"),
    "fit --plot": (["fit", "runs.csv", "--plot", "OUT"], ".png", "runs.csv"),
    "plan": (["plan", "runs.csv", "--out", "OUT"], ".json", "runs.csv"),
    "candidates": (["candidates", "--n", "1e9", "--layers", "16", "--head-dim", "64", "--out", "OUT"], ".csv", None),
    "search": (["search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--out", "OUT"],
               ".json", "fit1b.json"),
    "search --emit": (["search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16",
                       "--match", "cfg", "--emit", "OUT"], "", "cfg"),
    "search-gqa": (["search-gqa", "search.json", "--proxy-n", "2e4", "--proxy-tokens", "60K", "--runs", "new-runs.csv",
                    "--out", "OUT"], "", "search.json"),
    "bench": (["bench", "cfg/config.json", "--backend", "roofline", "--gpu", "h100-sxm", "--store", "OUT"], ".sqlite",
              "cfg/config.json"),
    "bench calibrate": (["bench", "calibrate", "--store", "store.sqlite", "--gpu", "cpu", "--out", "OUT"], ".json",
                        "store.sqlite"),
    "bench probe": (["bench", "probe", "--out", "OUT"], ".json", None),
    "train": (["train", "cfg", "--out", "OUT", "--device", "cpu", "--no-progress"], "", "cfg"),
    "sweep": (["sweep", "configs", "--runs", "new-runs.csv", "--out", "OUT", "--device", "cpu", "--no-progress"],
              "", "configs"),
    "export": (["export", "cfg/run", "--out", "OUT"], "", "cfg/run"),
    "data prepare": (["data", "prepare", "--corpus", "a.txt", "--out", "OUT"], "", "a.txt"),
}
CASES = [(verb, case) for verb, (_, _, source) in WRITERS.items()
         for case in ("onto an input", "under a file", "of the wrong kind") if source or case != "onto an input"]


@pytest.fixture
def inputs(work):
    """Every verb's inputs in the scratch folder: a config folder (with a finished-looking run), a store, a search, a text."""
    write_config(work / "cfg", TINY)
    (work / "cfg" / "run").mkdir()
    shutil.copytree(work / "cfg", work / "configs" / "a")
    append_store(work / "store.sqlite")
    (work / "search.json").write_text("{}\n")
    (work / "a.txt").write_text("some text\n" * 200)
    (work / "notes.txt").write_text("mine\n")
    return work


@pytest.mark.parametrize("verb, case", CASES, ids=[f"{verb}: {case}" for verb, case in CASES])
def test_every_writer_refuses_a_bad_output(refused, inputs, verb, case):
    args, suffix, source = WRITERS[verb]
    output, fragment = {
        "onto an input": (source, "is one of this command's inputs"),
        "under a file": ("notes.txt/out" + suffix, "notes.txt is a file, not a folder"),
        "of the wrong kind": ("out.txt", "use a name ending in") if suffix else ("notes.txt", "exists and is a file"),
    }[case]
    refused(fragment, *[output if arg == "OUT" else arg for arg in args])


# ---- damaged runs tables, nonsense training flags, a corpus that would read its own output --------------------
def write_damaged_runs(path: Path, damage: str) -> None:
    """Two rows as train appends them, then damaged as a killed copy, a merge or a crash leaves a table."""
    row = {column: 1 for column in TRAINED_RUN_COLUMNS} | {"loss": 4.4, "compiled": False, "recipe_hash": "abc",
                                                          "run_dir": "/runs/tiny", "name": "tiny"}
    append_run(path, row)
    append_run(path, row | {"loss": 4.3})
    header, first, second = path.read_text().splitlines(keepends=True)
    path.write_text({"cut mid-row": header + first + second[:9],
                     "conflict markers": header + "<<<<<<< HEAD\n" + first + "=======\n" + second + ">>>>>>> theirs\n",
                     "NUL bytes": header + first + second + "\0" * 16}[damage])


DAMAGED = {"cut mid-row": "row 2 (line 3) has 4 of the header's 23 cells: it was cut short",
           "conflict markers": "line 2 is a git conflict marker ('<<<<<<< HEAD')",
           "NUL bytes": "row 3 (line 4) holds NUL bytes"}
RUNS_READERS = {  # every verb that reads or appends to a runs table, the damaged one in damaged.csv
    "train": ["train", "tiny", "--runs", "damaged.csv", "--device", "cpu", "--no-progress"],
    "sweep": ["sweep", "configs", "--runs", "damaged.csv", "--device", "cpu", "--no-progress"],
    "fit": ["fit", "damaged.csv"],
    "search": ["search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16",
               "--runs", "damaged.csv"],
    "search-gqa": ["search-gqa", "search.json", "--proxy-n", "2e4", "--proxy-tokens", "60K", "--runs", "damaged.csv",
                   "--out", "gqa"],
}


@pytest.mark.parametrize("verb", RUNS_READERS)
@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_runs_table_is_refused_before_anything_is_trained(refused, tiny_cfg, work, verb, damage):
    """pandas reads each damage as plausible rows: train and sweep trained for minutes, then appended after it."""
    shutil.copytree(tiny_cfg, work / "configs" / "tiny")
    (work / "search.json").write_text("{}\n")
    write_damaged_runs(work / "damaged.csv", damage)
    refused(f"damaged.csv: {DAMAGED[damage]}", *RUNS_READERS[verb])


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_train_refuses_a_peak_tflops_that_is_not_a_positive_number(refused, tiny_cfg, value):
    refused(f"--peak-tflops {value}: must be a positive number of TFLOP/s per device", "train", tiny_cfg,
            "--peak-tflops", value, "--runs", "new.csv", "--device", "cpu", "--no-progress")


def test_data_prepare_out_inside_its_corpus_folder(refused, work):
    (work / "texts").mkdir()
    (work / "texts" / "a.txt").write_text("some text\n" * 2000)
    refused("--out texts/tokens: is inside --corpus texts, so the next prepare of that corpus would read this output's "
            "meta.json as text", "data", "prepare", "--corpus", "texts", "--out", "texts/tokens")
    refused("is inside --corpus texts/**", "data", "prepare", "--corpus", "texts/**", "--out", "texts/tokens")


def test_data_prepare_refuses_a_corpus_holding_prepared_data(refused, cli, work):
    (work / "texts").mkdir()
    (work / "texts" / "a.txt").write_text("some text\n" * 2000)
    assert cli("data", "prepare", "--corpus", "texts/a.txt", "--out", "texts/tokens").code == 0  # a file: allowed
    refused("takes in texts/tokens/meta.json, part of an earlier prepare's output", "data", "prepare", "--corpus", "texts",
            "--out", "tokens")


# ---- the bench store, serving engines, backends, dtypes and export folders ------------------------------------
def write_foreign_database(path: Path) -> None:
    """An SQLite database of some other program: a table of its own, no archscale results table."""
    import sqlite3

    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE people (name TEXT, age INTEGER)")
        connection.execute("INSERT INTO people VALUES ('ada', 36)")
    connection.close()


def test_bench_into_a_foreign_sqlite_database_measures_nothing(refused, work, monkeypatch):
    write_foreign_database(work / "other.sqlite")
    mtime = (work / "other.sqlite").stat().st_mtime_ns

    def measured(*args, **kwargs):
        raise AssertionError("a benchmark ran although --store is another program's database")

    monkeypatch.setattr("archscale.bench.roofline_backend.RooflineBackend.run", measured)
    refused("--store other.sqlite: is an SQLite database of something else (tables people), not an archscale results "
            "store; nothing was measured", "bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200",
            "--store", "other.sqlite")
    assert (work / "other.sqlite").stat().st_mtime_ns == mtime  # not even opened for writing


STORE_READERS = {
    "bench --show": ["bench", "--show", "--store", "other.sqlite"],
    "search --store": ["search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--match",
                       "llama-3.2-1b", "--gpu", "h200", "--store", "other.sqlite"],
    "bench calibrate": ["bench", "calibrate", "--store", "other.sqlite", "--gpu", "h200"],
}


@pytest.mark.parametrize("verb", STORE_READERS)
def test_reading_a_foreign_sqlite_database_is_refused(refused, work, verb):
    """Read as a store without rows, it printed "no records" or searched on estimates alone."""
    write_foreign_database(work / "other.sqlite")
    refused("other.sqlite: is an SQLite database of something else (tables people), not an archscale results store",
            *STORE_READERS[verb])


ENGINE_USERS = {
    "search": ["search", "--fit", "fit1b.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--match",
               "llama-3.2-1b", "--gpu", "h200"],
    "arch": ["arch", "llama-3.2-1b", "--gpu", "h200"],
    "bench": ["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--store", "s.sqlite"],
    "bench calibrate": ["bench", "calibrate", "--store", str(DATA / "dissertation_throughput.csv"), "--gpu", "h200"],
}


@pytest.mark.parametrize("verb", ENGINE_USERS)
def test_an_unknown_engine_is_refused_with_the_known_ones(refused, verb):
    """A typo found no profile and fell back, silently, to the uncalibrated estimate."""
    refused("--engine 'vlm': unknown serving engine; known engines: vllm, torch, sglang", *ENGINE_USERS[verb],
            "--engine", "vlm")


def test_bench_show_refuses_an_unknown_backend(refused, work):
    """It printed nothing and exited 0, as if the store had no rows of that backend."""
    append_store(work / "store.sqlite")
    refused("--backend 'vlm': unknown backend; a store's rows come from torch, vllm, roofline, sglang",
            "bench", "--show", "--store", "store.sqlite", "--backend", "vlm")


DTYPE_USERS = {
    "bench": ["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--store", "s.sqlite"],
    "bench calibrate": ["bench", "calibrate", "--store", str(DATA / "dissertation_throughput.csv"), "--gpu", "h200"],
    "bench probe": ["bench", "probe", "--out", "cpu.json"],
    "export": ["export", "no-run", "--out", "hf"],
}


@pytest.mark.parametrize("verb", DTYPE_USERS)
def test_an_unknown_dtype_is_refused_with_every_spelling_every_verb_accepts(refused, verb):
    refused("--dtype 'int8': unknown dtype; use bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float)",
            *DTYPE_USERS[verb], "--dtype", "int8")


def test_export_takes_bench_dtype_spellings_and_refuses_to_overwrite_an_export(refused, cli, tiny_run, work):
    """export took only bfloat16/float32 (bench: bf16/fp32), and overwrote an earlier export where train refuses."""
    assert cli("export", tiny_run / "run", "--out", "hf", "--dtype", "bf16").code == 0
    assert json.loads((work / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    refused("--out hf: already holds files (config.json, model.safetensors); choose another --out or empty it first",
            "export", tiny_run / "run", "--out", "hf", "--dtype", "fp32")


@pytest.mark.parametrize("fragment, args", [
    ("--budget is given twice (--budget 1e22, then --budget 1e23)",
     ("plan", "--fit", str(DATA.parent / "experiments" / "results" / "plan" / "chinchilla_huber.json"),
      "--budget", "1e22", "--budget", "1e23")),
    ("--layers is given twice (--layers 8, then --layers 16)",
     ("search", "--fit", str(DATA / "fits" / "dissertation_1b_mult.json"), "--n", "1e9", "--tokens", "1e11",
      "--layers", "8", "--layers=16")),
    ("--fix alpha is given twice (0.3, then 0.4)",
     ("fit", str(DATA / "chinchilla_epoch.csv"), "--law", "chinchilla", "--fix", "alpha=0.3", "--fix", "alpha=0.4")),
])
def test_a_single_valued_flag_given_twice_is_refused_not_silently_the_last(refused, fragment, args):
    """The parser kept the last value and dropped the first without a word: plan planned one budget of two."""
    refused(fragment, *args)


def test_fit_refuses_a_fixed_parameter_outside_its_bounds(refused):
    """--fix alpha=-1 was fitted, with only a warning that A collapsed: the law's alpha is a positive exponent."""
    refused("--fix alpha=-1: law chinchilla's alpha lies in (0, 3]", "fit", str(DATA / "chinchilla_epoch.csv"),
            "--law", "chinchilla", "--loss", "lsq", "--fix", "alpha=-1")


@pytest.mark.parametrize("flag", ["--where", "--holdout"])
def test_an_empty_condition_is_refused_not_read_as_none(refused, flag):
    """--where "" (an unset shell variable, say) fitted every row as if no condition had been given."""
    refused(f"{flag} is empty: give a condition", "fit", str(DATA / "chinchilla_epoch.csv"), flag, "")
