"""Training: configs, the loop on CPU, exact resume after kill -9, sweeps, export, torchrun."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from archscale.shapes.architecture import Architecture
from archscale.cli.cmd_train import default_run_dir
from archscale.io.errors import UserError
from archscale.model.transformer import Transformer
from archscale.fit.runs import REQUIRED, SHAPE, load_runs
from archscale.train.checkpoint import load_checkpoint
from archscale.train.config import TrainConfig, recipe_hash, write_config_dir
from archscale.train.export import read_safetensors
from archscale.train.loop import effective_warmup, lr_at, train
from archscale.shapes.hf_config import write_hf_config
from helpers import one_line_error

TINY = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
TINY_TRAIN = TrainConfig(tokens=20_480, seq_len=64, batch_size=8, micro_batch_size=4, lr_max=3e-3, warmup_steps=5,
                         eval_every=20, eval_tokens=4096, checkpoint_every=10, log_every=5)
ROW_COLUMNS = (*REQUIRED, *SHAPE, "train_loss", "val_loss", "tokens_per_s", "mfu", "recipe_hash", "run_dir")


@pytest.fixture
def tiny_cfg(tmp_path, corpus_data):
    """A tiny config folder; ``corpus_data`` points ARCHSCALE_CACHE at the private corpus, found without --data."""
    return write_config_dir(tmp_path / "tiny", TINY, TINY_TRAIN)


# ---- configuration ---------------------------------------------------------------
@pytest.mark.parametrize("size, batch, lr", [(80e6, 256, 1.5e-3), (120e6, 256, 1.0e-3), (300e6, 512, 8e-4),
                                             (1e9, 512, 6e-4), (2.8e9, 512, 6e-4), (25e6, 256, 1.5e-3)])
def test_defaults_follow_table_6_1(size, batch, lr):
    cfg = TrainConfig.for_model_size(int(size))
    assert (cfg.batch_size, cfg.lr_max, cfg.seq_len, cfg.warmup_steps) == (batch, lr, 2048, 500)
    assert (cfg.lr_min_ratio, cfg.weight_decay, cfg.betas, cfg.grad_clip, cfg.schedule) == (0.1, 0.1, (0.9, 0.95), 1.0, "cosine")
    assert cfg.tokens == int(100 * size)


def test_tiny_defaults_fit_a_cpu():
    cfg = TrainConfig.for_model_size(800_000, tokens=2e6)
    assert cfg.tokens == 2_000_000 and cfg.seq_len <= 256 and cfg.tokens_per_step <= 8192


def test_train_json_round_trip_and_errors(tmp_path):
    cfg = TrainConfig(tokens=1000, seq_len=32, batch_size=4, micro_batch_size=2, betas=(0.8, 0.9))
    cfg.save(tmp_path / "train.json")
    assert TrainConfig.load(tmp_path / "train.json") == cfg
    for content, key in [({"tokenz": 5}, "tokenz"), ({"lr_max": -1}, "lr_max"), ({"schedule": "linear"}, "schedule"),
                         ({"seq_len": 2.5}, "seq_len"), ({"batch_size": 6, "micro_batch_size": 4}, "micro_batch_size")]:
        (tmp_path / "train.json").write_text(json.dumps(content))
        with pytest.raises(UserError, match=rf"train.json: .*{key}"):
            TrainConfig.load(tmp_path / "train.json")


def test_lr_schedules():
    cfg = TrainConfig(tokens=100 * 64 * 4, seq_len=64, batch_size=4, micro_batch_size=4, lr_max=1e-3, warmup_steps=10)
    assert cfg.total_steps == 100 and effective_warmup(cfg) == 10
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    wsd = [lr_at(s, cfg.replace(schedule="wsd")) for s in range(100)]
    assert wsd[50] == wsd[79] == 1e-3 and wsd[-1] == pytest.approx(1e-4) and wsd[90] < 1e-3
    short = cfg.replace(tokens=20 * 64 * 4)
    assert effective_warmup(short) == 2  # warmup is capped at a tenth of the run


def test_recipe_hash_covers_both_files():
    base = recipe_hash(write_hf_config(TINY), TINY_TRAIN)
    assert base == recipe_hash(write_hf_config(TINY), TINY_TRAIN) and len(base) == 12
    assert base != recipe_hash(write_hf_config(TINY), TINY_TRAIN.replace(seed=1))
    assert base != recipe_hash({**write_hf_config(TINY), "intermediate_size": 96}, TINY_TRAIN)


# ---- bad input: exit 2, one line, nothing written --------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"num_key_value_heads": 3}, "does not divide"),
    ({"hidden_size": None}, "missing key 'hidden_size'"),
    ({"head_dim": 15}, "head_dim 15 must be even"),
], ids=["kv-heads", "no-hidden-size", "odd-head-dim"])
def test_invalid_model_config(tiny_cfg, cli, change, message):
    config = json.loads((tiny_cfg / "config.json").read_text())
    for key, value in change.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (tiny_cfg / "config.json").write_text(json.dumps(config))
    result = cli("train", tiny_cfg, "--device", "cpu")
    assert one_line_error(result) and message in result.err
    assert not default_run_dir(tiny_cfg).exists()


def test_bad_train_json_names_file_and_key(tiny_cfg, cli):
    (tiny_cfg / "train.json").write_text(json.dumps({**TINY_TRAIN.to_dict(), "warmup": 3}))
    result = cli("train", tiny_cfg)
    assert one_line_error(result) and "train.json" in result.err and "'warmup'" in result.err
    assert not default_run_dir(tiny_cfg).exists()


def test_resume_without_checkpoint(tiny_cfg, cli):
    result = cli("train", tiny_cfg, "--resume", "--device", "cpu")
    assert one_line_error(result) and "nothing to resume" in result.err
    assert not default_run_dir(tiny_cfg).exists()


def test_tokenizer_vocab_bigger_than_config_vocab(tmp_path, corpus_data, cli):
    cfg = write_config_dir(tmp_path / "small-vocab", Architecture(2, 64, 4, 2, 16, 128, vocab_size=100), TINY_TRAIN)
    result = cli("train", cfg, "--data", corpus_data, "--device", "cpu")
    assert one_line_error(result) and "tokenizer vocabulary 256 > config vocab_size 100" in result.err
    assert not default_run_dir(cfg).exists()


def test_data_too_small_for_seq_len(tiny_cfg, tmp_path, cli):
    (tmp_path / "corpus.txt").write_text("x = 1\n" * 2000)  # 12,000 bytes: val split 600 < 2 x 513
    assert cli("data", "prepare", "--corpus", tmp_path / "corpus.txt", "--out", tmp_path / "small").code == 0
    (tiny_cfg / "train.json").write_text(TINY_TRAIN.replace(seq_len=512).to_json())
    result = cli("train", tiny_cfg, "--data", tmp_path / "small")
    assert one_line_error(result) and "fewer than two sequences" in result.err
    assert not default_run_dir(tiny_cfg).exists()


def test_missing_data_dir(tiny_cfg, tmp_path, cli):
    result = cli("train", tiny_cfg, "--data", tmp_path / "nowhere")
    assert one_line_error(result) and "archscale data prepare" in result.err


def test_existing_run_is_not_overwritten(tiny_cfg, cli):
    assert cli("train", tiny_cfg, "--device", "cpu", "--no-progress", "--peak-tflops", "0.5").code == 0
    result = json.loads((default_run_dir(tiny_cfg) / "result.json").read_text())
    assert 0 < result["mfu"] < 1 and result["run_dir"] == str(default_run_dir(tiny_cfg).resolve())
    assert sorted(p.name for p in default_run_dir(tiny_cfg).iterdir()) == [
        "checkpoint.pt", "config.json", "log.jsonl", "result.json", "train.json"]
    result = cli("train", tiny_cfg, "--device", "cpu")
    assert one_line_error(result) and "--resume" in result.err


def test_train_without_out_runs_beside_the_configs_folder(tmp_path, corpus_data, cli):
    """The run used to go into CONFIG/run, inside the configs folder: a later `search --emit` there refused it, and
    `sweep` would read the run (it holds a config.json) as one more config."""
    cfg = write_config_dir(tmp_path / "configs" / "tiny", TINY, TINY_TRAIN)
    result = cli("train", cfg, "--device", "cpu", "--no-progress")
    assert result.code == 0, result.err
    assert (tmp_path / "configs-runs" / "tiny" / "result.json").is_file()
    assert result.out.startswith(str(tmp_path / "configs-runs" / "tiny"))
    assert sorted(p.name for p in (tmp_path / "configs").rglob("*")) == ["config.json", "tiny", "train.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(tiny_cfg, cli):
    result = cli("train", tiny_cfg, "--device", "cuda")
    assert one_line_error(result) and "no CUDA device" in result.err
    assert not default_run_dir(tiny_cfg).exists()


# ---- learning -------------------------------------------------------------------
def test_one_million_parameter_model_learns_the_embedded_corpus(tmp_path, corpus_data, cli):
    """~0.85M parameters, byte vocabulary: validation loss well below the unigram entropy."""
    arch = Architecture(4, 128, 4, 2, 32, 384, vocab_size=256, name="cpu-1m")
    recipe = TrainConfig(tokens=320_000, seq_len=128, batch_size=16, micro_batch_size=16, lr_max=3e-3, warmup_steps=20,
                         eval_every=50, eval_tokens=32_768, checkpoint_every=0, log_every=10)
    cfg = write_config_dir(tmp_path / "cpu-1m", arch, recipe)
    started = time.perf_counter()
    result = cli("train", cfg, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--no-progress", "--json")
    wall = time.perf_counter() - started
    assert result.code == 0, result.err
    assert "epochs of the corpus" not in result.err  # 320K tokens of a 3.8M-token corpus: no token seen twice
    row = json.loads(result.out)
    tokens = np.concatenate([np.fromfile(corpus_data / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    counts = np.bincount(tokens, minlength=256).astype(float)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    print(f"\n~1M model: val loss {row['val_loss']:.4f} vs unigram entropy {entropy:.4f} nats/token; "
          f"{row['tokens_per_s']:,.0f} tokens/s; {row['D']:,} tokens in {wall:.1f} s")
    assert row["val_loss"] < entropy - 0.6
    assert row["N"] == arch.n_params_non_embedding and row["D"] == 157 * 2048 and row["mfu"] is None
    table = load_runs(tmp_path / "runs.csv")
    assert len(table) == 1 and table["loss"].iloc[0] == pytest.approx(row["val_loss"])
    log = [json.loads(line) for line in (default_run_dir(cfg) / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"] and log[-1]["val_loss"] == pytest.approx(row["val_loss"])
    assert [r["step"] for r in log if r["val_loss"] is not None] == [50, 100, 150, 157]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in log)


def test_a_budget_beyond_one_epoch_says_how_many_once_before_training(tmp_path, cli, one_thread):
    """The embedded corpus cut to its first few files: a budget that repeats it is noted, and still trained."""
    from archscale.train.data import ByteTokenizer, default_corpus_files, prepare_files

    meta = prepare_files(default_corpus_files(max_bytes=20_000), tmp_path / "data", ByteTokenizer(), 0.05, "stdlib")
    tokens = int(2.4 * meta["n_train"])
    cfg = write_config_dir(tmp_path / "tiny", TINY, TINY_TRAIN)
    result = cli("train", cfg, "--data", tmp_path / "data", "--tokens", str(tokens), "--runs", tmp_path / "runs.csv",
                 "--device", "cpu", "--no-progress")
    assert result.code == 0, result.err
    trained = math.ceil(tokens / TINY_TRAIN.tokens_per_step) * TINY_TRAIN.tokens_per_step
    notes = [line for line in result.err.splitlines() if "epochs of the corpus" in line]
    assert notes == [f"note: {trained / meta['n_train']:.3g} epochs of the corpus: {trained:,} training tokens from a "
                     f"train split of {meta['n_train']:,} ({tmp_path / 'data'}); repeated tokens are worth less than "
                     "fresh ones, so this run's loss is not a one-epoch point for a scaling fit: give a bigger corpus "
                     "(--data) or fewer --tokens"]
    assert notes[0].startswith("note: 2.4")
    assert len(load_runs(tmp_path / "runs.csv")) == 1


def test_gradient_accumulation_matches_one_big_micro_batch(tmp_path, corpus_data):
    recipe = TINY_TRAIN.replace(tokens=10 * 512, eval_every=0, checkpoint_every=0)
    whole = train(TINY, corpus_data, tmp_path / "whole", train_config=recipe.replace(micro_batch_size=8), device="cpu",
                  progress=False)
    split = train(TINY, corpus_data, tmp_path / "split", train_config=recipe.replace(micro_batch_size=2), device="cpu",
                  progress=False)
    assert split.val_loss == pytest.approx(whole.val_loss, abs=1e-5)
    assert split.recipe_hash != whole.recipe_hash


def test_wsd_schedule_and_z_loss_train(tmp_path, corpus_data):
    recipe = TINY_TRAIN.replace(tokens=20 * 512, schedule="wsd", z_loss=1e-4, eval_every=0, checkpoint_every=0)
    result = train(TINY, corpus_data, tmp_path / "run", train_config=recipe, device="cpu", progress=False)
    assert math.log(256) - 1 > result.val_loss > 0  # it learned something
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lrs[1] == lrs[2] == recipe.lr_max and lrs[-1] == pytest.approx(recipe.lr_max * recipe.lr_min_ratio)


def test_divergence_is_reported_and_not_recorded(tmp_path, corpus_data):
    recipe = TINY_TRAIN.replace(tokens=20 * 512, lr_max=1e6, warmup_steps=0, grad_clip=0, log_every=1, eval_every=0)
    with pytest.raises(UserError, match="diverged"):
        train(TINY, corpus_data, tmp_path / "run", train_config=recipe, runs=tmp_path / "runs.csv", device="cpu", progress=False)
    assert not (tmp_path / "runs.csv").exists() and not (tmp_path / "run" / "result.json").exists()


# ---- kill -9 and resume ------------------------------------------------------------
def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, corpus_cache, corpus_data, cli):
    recipe = TINY_TRAIN.replace(tokens=120 * 512, checkpoint_every=10, eval_every=25)  # 120 steps
    cfg = write_config_dir(tmp_path / "cfg", TINY, recipe)
    runs = tmp_path / "runs.csv"
    flags = ["--data", str(corpus_data), "--runs", str(runs), "--device", "cpu", "--no-progress", "--seed", "3"]

    killed = tmp_path / "killed"
    env = {**os.environ, "ARCHSCALE_CACHE": str(corpus_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "archscale", "train", str(cfg), "--out", str(killed), *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    step_at_kill = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < step_at_kill < recipe.total_steps and not (killed / "result.json").exists()
    assert not runs.exists()

    reference = cli("train", cfg, "--out", tmp_path / "reference", *flags, "--json")
    assert reference.code == 0, reference.err
    resumed = cli("train", cfg, "--out", killed, *flags, "--resume", "--json")
    assert resumed.code == 0, resumed.err
    a, b = json.loads(reference.out), json.loads(resumed.out)
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)

    table = pd.read_csv(runs)
    assert len(table) == 2 and not table[list(ROW_COLUMNS[:-4])].isna().any().any()
    assert set(ROW_COLUMNS) <= set(table.columns)
    assert (table["run_dir"] == str(killed.resolve())).sum() == 1
    load_runs(runs)  # every row validates
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # lines after the checkpoint were dropped

    again = cli("train", cfg, "--out", killed, *flags, "--resume", "--json")  # finished: reported, not re-appended
    assert again.code == 0 and json.loads(again.out)["val_loss"] == b["val_loss"]
    assert len(pd.read_csv(runs)) == 2
    changed = cli("train", cfg, "--out", tmp_path / "reference", *flags[:-1], "4", "--resume")
    assert one_line_error(changed) and "resume with the same config" in changed.err
    print(f"\nkilled at checkpoint step {step_at_kill} of {recipe.total_steps}; val loss {a['val_loss']:.6f} "
          f"uninterrupted vs {b['val_loss']:.6f} resumed")


# ---- sweep ------------------------------------------------------------------------
def test_sweep_trains_each_config_once_and_resumes(tmp_path, corpus_data, cli):
    configs = tmp_path / "configs"
    write_config_dir(configs / "a", TINY, TINY_TRAIN)
    write_config_dir(configs / "b", Architecture(2, 64, 2, 1, 16, 192, vocab_size=256), TINY_TRAIN)
    write_config_dir(configs / "c", Architecture(1, 64, 4, 4, 16, 64, vocab_size=256), TINY_TRAIN)
    (configs / "notes").mkdir()
    # c was trained to the end but crashed before reporting: only its checkpoint remains
    train(configs / "c", corpus_data, configs / "c" / "run", tokens=8192, device="cpu", progress=False)
    (configs / "c" / "run" / "result.json").unlink()
    runs = tmp_path / "runs.csv"

    first = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--tokens", "8192", "--device", "cpu", "--no-progress")
    assert first.code == 0, first.err
    assert first.out.splitlines()[0].startswith("a: trained") and "b: trained" in first.out and "c: resumed" in first.out
    second = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--tokens", "8192", "--device", "cpu", "--no-progress")
    assert second.code == 0 and second.out.count("skipped") == 3
    table = load_runs(runs)
    assert len(table) == 3 and table["recipe_hash"].is_unique and (table["D"] == 8192).all()


def test_a_recipe_trained_on_other_data_is_another_run(tmp_path, corpus_data, cli):
    """The same recipe on another corpus is a new point for the fit: the sweep trains it rather than skipping it as
    'in runs table', each row names its data, and neither a sweep nor a resume takes the first data's run dir for it."""
    corpus = tmp_path / "texts"
    corpus.mkdir()
    (corpus / "a.txt").write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400)))
    other = tmp_path / "other-data"
    assert cli("data", "prepare", "--corpus", corpus, "--out", other).code == 0
    configs = tmp_path / "configs"
    write_config_dir(configs / "a", TINY, TINY_TRAIN)
    runs = tmp_path / "runs.csv"
    flags = ("--runs", runs, "--tokens", "4096", "--device", "cpu", "--no-progress")

    first = cli("sweep", configs, "--data", corpus_data, *flags)
    assert first.code == 0 and "a: trained" in first.out, first.err
    same_run_dir = cli("sweep", configs, "--data", other, *flags)  # configs/a/run holds the first data's run
    assert one_line_error(same_run_dir) and "on other data" in same_run_dir.err
    assert "give --out a new folder" in same_run_dir.err
    other_tokens = cli("sweep", configs, "--data", corpus_data, *flags[:2], "--tokens", "2048", *flags[4:])
    assert one_line_error(other_tokens) and "a finished run of another recipe of a" in other_tokens.err  # was "skipped"
    second = cli("sweep", configs, "--data", other, *flags, "--out", tmp_path / "other-runs")
    assert second.code == 0 and "a: trained" in second.out, second.err
    again = cli("sweep", configs, "--data", other, *flags, "--out", tmp_path / "other-runs")
    assert again.code == 0 and "a: skipped" in again.out, again.err
    table = load_runs(runs)
    assert len(table) == 2 and table["recipe_hash"].nunique() == 1 and table["data_hash"].nunique() == 2
    assert table["loss"].nunique() == 2

    resumed = cli("train", configs / "a", "--data", other, "--out", configs / "a" / "run", "--tokens", "4096",
                  "--device", "cpu", "--no-progress", "--resume")
    assert one_line_error(resumed) and "trained on other data" in resumed.err


def test_sweep_of_a_directory_without_configs(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    result = cli("sweep", tmp_path / "empty", "--runs", tmp_path / "runs.csv")
    assert one_line_error(result) and "no subdirectory" in result.err


# ---- export -----------------------------------------------------------------------
@pytest.fixture
def trained_run(tmp_path, corpus_data):
    arch = Architecture(2, 96, 3, 1, 16, 96, vocab_size=256, name="narrow")  # head_dim 16, not d_model / n_heads = 32
    cfg = write_config_dir(tmp_path / "narrow", arch, TINY_TRAIN)
    train(cfg, corpus_data, tmp_path / "run", tokens=4096, device="cpu", progress=False)
    return arch, tmp_path / "run"


def test_export_writes_hf_llama_names(trained_run, tmp_path, cli):
    arch, run = trained_run
    result = cli("export", run, "--out", tmp_path / "hf")
    assert result.code == 0, result.err
    tensors = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.1.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight", "model.layers.0.post_attention_layernorm.weight"} <= set(tensors)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (arch.d_kv, arch.d_model)
    assert sum(t.numel() for t in tensors.values()) == arch.n_params_total
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["head_dim"] == 16 and config["torch_dtype"] == "float32"

    model = Transformer(arch)
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()})
    reference = Transformer(arch)
    reference.load_state_dict(load_checkpoint(run / "checkpoint.pt")["model"])
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(model(idx)[0], reference(idx)[0])


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_export_loads_in_transformers(tmp_path, corpus_data):
    from transformers import LlamaForCausalLM

    arch = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256)  # divisible, which transformers 5 insists on
    cfg = write_config_dir(tmp_path / "cfg", arch, TINY_TRAIN)
    train(cfg, corpus_data, tmp_path / "run", tokens=4096, device="cpu", progress=False)
    from archscale.train.export import export_hf

    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = Transformer(arch).eval()
    ours.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"])
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=1e-4)


def test_export_of_a_directory_without_checkpoint(tmp_path, cli):
    result = cli("export", tmp_path, "--out", tmp_path / "hf")
    assert one_line_error(result) and "checkpoint.pt" in result.err


# ---- torchrun ---------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not found")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_cpu_ranks_match_one_process(tmp_path, corpus_data, mode):
    cfg = write_config_dir(tmp_path / "cfg", TINY, TINY_TRAIN)
    single = train(cfg, corpus_data, tmp_path / "single", device="cpu", progress=False)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "archscale.train", str(cfg), "--data", str(corpus_data), "--out", str(tmp_path / mode),
               "--runs", str(tmp_path / "runs.csv"), "--device", "cpu", "--no-progress", "--json"]
    if mode == "fsdp":
        command.append("--fsdp")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout)  # only rank 0 printed
    assert row["val_loss"] == pytest.approx(single.val_loss, abs=1e-4)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 1
    assert math.isfinite(row["train_loss"])


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "nope", "nope: no such folder"),
    (lambda tmp: (tmp / "x.png").write_bytes(b"\x89PNG") and tmp / "x.png", "x.png: is a file, not a folder"),
])
def test_export_of_a_path_that_is_not_a_run_dir_says_what_it_is(cli, tmp_path, make, fragment):
    """A missing path and a file both read 'no checkpoint.pt; is it a run directory'."""
    result = cli("export", make(tmp_path), "--out", tmp_path / "hf")
    assert one_line_error(result) and fragment in result.err


def test_threads_sets_the_runs_cpu_threads_and_not_its_recipe(tmp_path, corpus_data):
    """On a shared machine torch's default (every core) trained 4x slower than one thread; --threads sets it, and
    the recipe hash (what a sweep matches runs by) does not change with it."""
    previous = torch.get_num_threads()
    try:
        cfg = write_config_dir(tmp_path / "tiny", TINY, TINY_TRAIN)
        one = train(cfg, corpus_data, tmp_path / "one", tokens=2048, device="cpu", progress=False, threads=1)
        assert torch.get_num_threads() == 1
        two = train(cfg, corpus_data, tmp_path / "two", tokens=2048, device="cpu", progress=False, threads=2)
        assert torch.get_num_threads() == 2 and one.recipe_hash == two.recipe_hash
        with pytest.raises(UserError, match="--threads must be at least 1"):
            train(cfg, corpus_data, tmp_path / "none", tokens=2048, device="cpu", progress=False, threads=0)
    finally:
        torch.set_num_threads(previous)
