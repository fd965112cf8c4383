"""One spelling per concept: each renamed flag's old spelling still works, does what the new one does, and says so.

Each test runs the command twice, under the old and the new spelling, and
compares what a user gets (the printed result, the file written); the old one
also prints exactly one ``note:`` line naming the new spelling.
"""

from __future__ import annotations

import json

import pytest

from archscale.shapes.architecture import Architecture
from archscale.train.config import TrainConfig, write_config_dir
from archscale.train.data import default_data_dir
from conftest import DATA

PUBLISHED_THROUGHPUT = DATA / "dissertation_throughput.csv"
FIT_1B = DATA / "fits" / "dissertation_1b_mult.json"
MINI_STUDY_FIT = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "cond.json"
TINY = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
TINY_TRAIN = TrainConfig(tokens=2048, seq_len=64, batch_size=8, micro_batch_size=4, lr_max=3e-3, warmup_steps=1,
                         eval_every=0, eval_tokens=1024, checkpoint_every=2, log_every=2)


def old_and_new(cli, old: list, new: list, note: str):
    """Run both spellings; check the old one's single note line; return both results."""
    before, after = cli(*old), cli(*new)
    assert before.code == 0 == after.code, (before.err, after.err)
    notes = [line for line in before.err.splitlines() if line.startswith("note: `archscale")]
    assert notes == [f"note: `archscale {note}; the old spelling still works for now"], before.err
    assert "note: `archscale" not in after.err
    return before, after


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_bench_out_is_now_store(cli, work):
    args = ["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--batch-sizes", "16", "--json"]
    old, new = old_and_new(cli, [*args, "--out", "old.sqlite"], [*args, "--store", "new.sqlite"],
                           "bench --out` is now `--store`")
    shown = [json.loads(cli("bench", "--show", "--store", name, "--json").out) for name in ("old.sqlite", "new.sqlite")]
    assert len(shown[0]) == len(shown[1]) == 1
    assert shown[0][0]["tokens_per_s"] == shown[1][0]["tokens_per_s"] > 0


def test_bench_calibrate_out_store_is_now_store(cli, work):
    args = ["bench", "calibrate", "--gpu", "h200", "--json"]
    old, new = old_and_new(cli, [*args, "--out", str(PUBLISHED_THROUGHPUT)], [*args, "--store", str(PUBLISHED_THROUGHPUT)],
                           "bench calibrate --out` is now `--store`")
    assert json.loads(old.out)["profile"] == json.loads(new.out)["profile"]


def test_bench_calibrate_save_is_now_out(cli, work):
    args = ["bench", "calibrate", "--store", str(PUBLISHED_THROUGHPUT), "--gpu", "h200", "--name", "mine"]  # named: else each takes its file name
    old_and_new(cli, [*args, "--save", "old.json"], [*args, "--out", "new.json"], "bench calibrate --save` is now `--out`")
    assert (work / "old.json").read_bytes() == (work / "new.json").read_bytes()


def test_bench_probe_save_is_now_out(cli, work):
    args = ["bench", "probe", "--threads", "1"]
    old_and_new(cli, [*args, "--save", "old.json"], [*args, "--out", "new.json"], "bench probe --save` is now `--out`")
    old, new = (json.loads((work / name).read_text()) for name in ("old.json", "new.json"))
    assert [e.keys() for e in old] == [e.keys() for e in new] and old[0]["name"] == new[0]["name"] == "cpu"  # rates vary


def test_search_bench_is_now_store(cli, work):
    """Both spellings read the store alike: here its one row is a roofline estimate, so both refuse it the same way."""
    assert cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--store", "s.sqlite").code == 0
    args = ["search", "--fit", str(MINI_STUDY_FIT), "--n", "200K", "--tokens", "1.5M", "--layers", "4", "--head-dim", "16",
            "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1,2", "--top-k", "2", "--json"]
    old, new = cli(*args, "--bench", "s.sqlite"), cli(*args, "--store", "s.sqlite")
    assert old.code == new.code == 2
    assert old.err.splitlines() == ["note: `archscale search --bench` is now `--store`; the old spelling still works for now",
                                    *new.err.splitlines()]
    assert "none of its 1 rows is a successful torch or vLLM measurement" in new.err


def test_predict_d_is_now_tokens(cli, work):
    args = ["predict", str(FIT_1B), "--n", "1e9", "--d-model", "2560", "--ratio", "1.07", "--json"]
    old, new = old_and_new(cli, [*args, "--d", "1e11"], [*args, "--tokens", "100B"], "predict --d` is now `--tokens`")
    assert json.loads(old.out) == json.loads(new.out)
    assert json.loads(new.out)["inputs"]["D"] == 1e11


def test_export_hf_is_now_out(cli, work, monkeypatch):
    from archscale.train.loop import train

    monkeypatch.setenv("ARCHSCALE_CACHE", str(work / "cache"))
    default_data_dir()
    config = write_config_dir(work / "tiny", TINY, TINY_TRAIN)
    train(config, device="cpu", progress=False)
    old_and_new(cli, ["export", config / "run", "--hf", "old-hf"], ["export", config / "run", "--out", "new-hf"],
                "export --hf` is now `--out`")
    for name in ("config.json", "model.safetensors"):
        assert (work / "old-hf" / name).read_bytes() == (work / "new-hf" / name).read_bytes()


def test_both_spellings_at_once_are_refused(cli, work):
    """``--store`` and the old ``--out`` together are two stores: the parser refuses, nothing is rewritten or merged."""
    result = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--store", "a.sqlite", "--out", "b.sqlite")
    assert result.code == 2 and result.err.startswith("error: No such option: --out")
    assert not list(work.iterdir())


@pytest.mark.parametrize("verb", [["train", "cfg"], ["sweep", "cfgs", "--runs", "runs.csv"],
                                  ["search", "--fit", str(FIT_1B), "--n", "1e9", "--layers", "16"],
                                  ["predict", str(FIT_1B), "--n", "1e9"]])
def test_every_tokens_flag_reads_counts_with_suffixes(cli, work, verb):
    """`--tokens 1.5M` means the same in every verb (train refused it once while search took it)."""
    from archscale.cli.cmd_train import _tokens

    assert _tokens("1.5M") == 1_500_000 and _tokens("2e6") == 2_000_000 and _tokens("100K") == 100_000
    result = cli(*verb, "--tokens", "1.5Q")
    assert result.code == 2 and result.err == "error: --tokens '1.5Q': expected a number such as 1e9, 975M or 1.5B\n"
    assert not list(work.iterdir())
