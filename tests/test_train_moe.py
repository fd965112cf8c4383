"""Mixture of Experts in the bundled model and loop: Mixtral's routing, the load-balancing loss, exact resume after
kill -9, the runs-table columns, and an export that transformers loads as the same model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from archscale.cli.cmd_train import default_run_dir
from archscale.fit.runs import MOE_RUN_COLUMNS, load_runs
from archscale.io.errors import UserError
from archscale.model.transformer import Transformer, load_balancing_loss
from archscale.shapes.architecture import Architecture
from archscale.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from archscale.train.config import ROUTER_AUX_LOSS_COEF, TrainConfig, write_config_dir
from archscale.train.export import export_hf, read_safetensors
from archscale.train.loop import train
from archscale.shapes.hf_config import write_hf_config
from helpers import one_line_error

MOE = Architecture(2, 64, 4, 2, 16, 96, vocab_size=256, name="tiny-moe", n_experts=4, experts_per_token=2,
                   expert_d_ff=96)
DENSE = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
RECIPE = TrainConfig(tokens=20_480, seq_len=64, batch_size=8, micro_batch_size=4, lr_max=3e-3, warmup_steps=5,
                     eval_every=20, eval_tokens=4096, checkpoint_every=10, log_every=5)


def naive_moe(block, x: torch.Tensor) -> torch.Tensor:
    """Mixtral's block written token by token: softmax over E, top k, renormalised, weighted sum of SwiGLU experts."""
    experts = block.experts
    out = torch.zeros_like(x)
    for t in range(len(x)):
        probs = torch.softmax(block.gate(x[t]).float(), dim=-1)
        weights, chosen = probs.topk(block.top_k)
        for weight, e in zip(weights / weights.sum(), chosen):
            hidden = F.silu(experts.gate_proj[e] @ x[t]) * (experts.up_proj[e] @ x[t])
            out[t] += weight * (experts.down_proj[e] @ hidden)
    return out


# ---- the model ---------------------------------------------------------------------
def test_moe_model_counts_every_expert_as_the_architecture_does():
    model = Transformer(MOE)
    assert model.n_params() == MOE.n_params_total and model.n_params(non_embedding=True) == MOE.n_params_non_embedding
    assert MOE.n_params_active < MOE.n_params_total  # 2 of 4 experts per token
    assert model.layers[0].mlp.experts.gate_proj.shape == (4, 96, 64)


def test_moe_block_is_mixtrals_routing_and_the_cached_path_agrees():
    torch.manual_seed(0)
    model = Transformer(MOE).eval()
    x = torch.randn(7, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.layers[0].mlp(x), naive_moe(model.layers[0].mlp, x), atol=1e-6, rtol=1e-5)
        idx = torch.randint(0, 256, (2, 12))
        full = model(idx)[0]
        model.allocate_kv_cache(2, 12, tune_kernels=False)  # frozen weights on CPU: prefill then token by token
        steps = [model.forward_step(idx[:, :8], 0)] + [model.forward_step(idx[:, t : t + 1], t) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_balance_loss_is_k_when_even_and_e_when_the_router_collapses():
    torch.manual_seed(0)
    model = Transformer(MOE)
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.gate.weight.zero_()  # every expert equally likely, whatever the ties pick
        even = model(idx, idx, balance=True)[2]
    assert even.item() == pytest.approx(MOE.experts_per_token)
    # every token of both layers sends all its probability to expert 0 and picks experts 0 and 1: E * 1 * 1
    collapsed = [(torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1), torch.tensor([[0, 1]]).repeat(5, 1))] * 2
    assert load_balancing_loss(collapsed, 4).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="routes nothing"):
        Transformer(DENSE)(idx, balance=True)


@pytest.mark.parametrize("changes, fragment", [
    ({"n_shared_experts": 1, "shared_expert_d_ff": 64}, "n_shared_experts 1: shared experts"),
    ({"first_dense_layers": 1, "d_ff": 128}, "first_dense_layers 1: dense layers before"),
])
def test_the_model_refuses_moe_layouts_it_does_not_have(changes, fragment):
    shape = dataclasses.replace(MOE, **changes)
    with pytest.raises(UserError, match=fragment):
        Transformer(shape)


# ---- training ------------------------------------------------------------------------
def test_moe_trains_logs_its_balance_loss_and_records_moe_columns(tmp_path, corpus_data, cli):
    runs = tmp_path / "runs.csv"
    dense = write_config_dir(tmp_path / "dense", DENSE, RECIPE.replace(tokens=4096))
    assert cli("train", dense, "--runs", runs, "--device", "cpu", "--no-progress").code == 0
    dense_header = pd.read_csv(runs).columns.tolist()
    assert not set(MOE_RUN_COLUMNS) & set(dense_header)  # a dense row is what it always was

    moe = write_config_dir(tmp_path / "moe", MOE, RECIPE)
    result = cli("train", moe, "--runs", runs, "--device", "cpu", "--no-progress", "--json")
    assert result.code == 0, result.err
    row = json.loads(result.out)
    assert (row["n_experts"], row["experts_per_token"], row["expert_d_ff"]) == (4, 2, 96)
    assert row["N"] == MOE.n_params_non_embedding and row["N_active"] == MOE.n_params_active_non_embedding
    assert row["N_active"] < row["N"] and row["val_loss"] < 5.0  # ln 256 = 5.55: it learned

    log = [json.loads(line) for line in (default_run_dir(moe) / "log.jsonl").read_text().splitlines()]
    assert all(MOE.experts_per_token <= r["balance_loss"] < MOE.n_experts for r in log)  # k: even, E: collapsed
    assert json.loads((default_run_dir(moe) / "config.json").read_text())["router_aux_loss_coef"] == ROUTER_AUX_LOSS_COEF

    again = write_config_dir(tmp_path / "dense-again", DENSE, RECIPE.replace(tokens=4096, seed=1))
    assert cli("train", again, "--runs", runs, "--device", "cpu", "--no-progress").code == 0  # dense after MoE
    table = load_runs(runs)
    assert len(table) == 3 and table["n_experts"].isna().tolist() == [True, False, True]
    assert pd.read_csv(runs).columns.tolist() == dense_header + list(MOE_RUN_COLUMNS)


def test_the_balance_weight_comes_from_config_json_and_is_hashed(tmp_path, corpus_data):
    recipe = RECIPE.replace(tokens=2048, eval_every=0)
    config = write_hf_config(MOE)
    runs = {}
    for coef in (0.0, 1.0):
        folder = write_config_dir(tmp_path / f"coef-{coef}", MOE, recipe)
        (folder / "config.json").write_text(json.dumps({**config, "router_aux_loss_coef": coef}))
        runs[coef] = train(folder, corpus_data, folder / "run", device="cpu", progress=False)
    assert runs[0.0].recipe_hash != runs[1.0].recipe_hash
    assert runs[0.0].val_loss != pytest.approx(runs[1.0].val_loss, abs=1e-6)  # the weight changes what is learned


@pytest.mark.parametrize("changes, fragment", [
    ({"router_aux_loss_coef": -0.1}, "router_aux_loss_coef must be a number >= 0"),
    ({"router_jitter_noise": 0.01}, "router_jitter_noise 0.01: router input noise"),
    ({"sliding_window": 32}, "sliding_window 32 on 2 of 2 layers"),
    ({"model_type": "qwen2_moe", "num_local_experts": None, "num_experts": 4, "moe_intermediate_size": 96,
      "shared_expert_intermediate_size": 64}, "shared_expert_intermediate_size 64: shared experts"),
])
def test_train_refuses_moe_configs_the_bundled_model_is_not(tmp_path, cli, changes, fragment):
    folder = write_config_dir(tmp_path / "cfg", MOE, RECIPE)
    (folder / "config.json").write_text(json.dumps({**write_hf_config(MOE), **changes}))
    result = cli("train", folder, "--device", "cpu", "--no-progress", "--out", tmp_path / "run")
    assert one_line_error(result) and fragment in result.err, result.err
    assert not (tmp_path / "run").exists()


def test_moe_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, corpus_cache, corpus_data, cli):
    recipe = RECIPE.replace(tokens=60 * 512, checkpoint_every=10, eval_every=25)  # 60 steps
    cfg = write_config_dir(tmp_path / "cfg", MOE, recipe)
    flags = ["--data", str(corpus_data), "--runs", str(tmp_path / "runs.csv"), "--device", "cpu", "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "archscale", "train", str(cfg), "--out", str(killed), *flags],
                            env={**os.environ, "ARCHSCALE_CACHE": str(corpus_cache)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not checkpoint_path(killed).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    step_at_kill = load_checkpoint(checkpoint_path(killed))["step"]
    assert 0 < step_at_kill < recipe.total_steps and not (killed / "result.json").exists()

    reference = cli("train", cfg, "--out", tmp_path / "reference", *flags, "--json")
    resumed = cli("train", cfg, "--out", killed, *flags, "--resume", "--json")
    assert reference.code == 0 and resumed.code == 0, reference.err + resumed.err
    a, b = json.loads(reference.out), json.loads(resumed.out)
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (tmp_path / "reference", killed)]
    assert [r["balance_loss"] for r in logs[1]] == pytest.approx([r["balance_loss"] for r in logs[0]], abs=1e-5)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 2
    print(f"\nMoE killed at checkpoint step {step_at_kill} of {recipe.total_steps}; val loss {a['val_loss']:.6f} "
          f"uninterrupted vs {b['val_loss']:.6f} resumed")


# ---- export ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moe_run(tmp_path_factory, corpus_cache) -> Path:
    """A finished tiny MoE run (trained once for the module)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
        folder = write_config_dir(tmp_path_factory.mktemp("moe") / "cfg", MOE, RECIPE.replace(tokens=4096))
        train(folder, device="cpu", progress=False)
    return folder / "run"


def test_export_writes_mixtral_names_and_config(moe_run, tmp_path, cli):
    assert cli("export", moe_run, "--out", tmp_path / "hf").code == 0
    tensors = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == MOE.n_params_total
    layer = "model.layers.1.block_sparse_moe"
    assert tensors[f"{layer}.gate.weight"].shape == (4, 64)
    assert {tuple(tensors[f"{layer}.experts.3.{w}.weight"].shape) for w in ("w1", "w3")} == {(96, 64)}
    assert tensors[f"{layer}.experts.3.w2.weight"].shape == (64, 96)
    assert not [name for name in tensors if ".mlp." in name]
    stacked = load_checkpoint(checkpoint_path(moe_run))["model"]["layers.1.mlp.experts.up_proj"]
    torch.testing.assert_close(tensors[f"{layer}.experts.2.w3.weight"], stacked[2])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("mixtral", ["MixtralForCausalLM"])
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["intermediate_size"]) == (4, 2, 96)
    assert config["router_aux_loss_coef"] == ROUTER_AUX_LOSS_COEF and config["sliding_window"] is None


def test_export_refuses_a_moe_run_whose_config_says_dense(moe_run, tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    state = load_checkpoint(checkpoint_path(moe_run))
    state["hf_config"] = write_hf_config(DENSE)
    save_checkpoint(checkpoint_path(run), state)
    result = cli("export", run, "--out", tmp_path / "hf")
    assert one_line_error(result) and "the checkpoint's weights are not the model its config describes" in result.err
    assert not (tmp_path / "hf").exists()


COMPARE = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
assert type(model).__name__ == "MixtralForCausalLM", type(model).__name__
idx = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(idx, output_router_logits=True)
torch.save({"logits": out.logits, "aux_loss": out.aux_loss}, sys.argv[3])
"""


def transformers_python() -> str | None:
    """A Python that has transformers: this one, else the vLLM environment's (``$ARCHSCALE_VLLM_PYTHON``, which CI
    sets up with transformers in it)."""
    if importlib.util.find_spec("transformers") is not None:
        return sys.executable
    other = os.environ.get("ARCHSCALE_VLLM_PYTHON")
    if other and Path(other).exists():
        found = subprocess.run([other, "-c", "import transformers"], capture_output=True)
        if found.returncode == 0:
            return other
    return None


def test_export_loads_in_transformers_as_the_same_model(moe_run, tmp_path):
    python = transformers_python()
    if python is None:
        if os.environ.get("ARCHSCALE_REQUIRE_VLLM") == "1":
            pytest.fail("ARCHSCALE_REQUIRE_VLLM=1 but neither this Python nor $ARCHSCALE_VLLM_PYTHON has transformers")
        pytest.skip("transformers is not installed here or in $ARCHSCALE_VLLM_PYTHON")
    export_hf(moe_run, tmp_path / "hf")
    torch.manual_seed(0)
    idx = torch.randint(0, 256, (2, 24))
    torch.save(idx, tmp_path / "idx.pt")
    done = subprocess.run([python, "-c", COMPARE, str(tmp_path / "hf"), str(tmp_path / "idx.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    ours = Transformer(MOE).eval()
    ours.load_state_dict(load_checkpoint(checkpoint_path(moe_run))["model"])
    with torch.no_grad():
        logits, _, balance = ours(idx, idx, balance=True)
    torch.testing.assert_close(theirs["logits"], logits, atol=1e-4, rtol=1e-4)
    assert theirs["aux_loss"].item() == pytest.approx(balance.item(), abs=1e-5)  # the same load-balancing loss


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not found")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_cpu_ranks_train_the_same_moe(tmp_path, corpus_data, mode):
    """Every expert takes part in every step (DDP needs it), and the routing reaches the loss through FSDP's blocks."""
    recipe = RECIPE.replace(tokens=8 * 512, micro_batch_size=2, checkpoint_every=0, eval_every=0, log_every=2)
    cfg = write_config_dir(tmp_path / "cfg", MOE, recipe)
    single = train(cfg, corpus_data, tmp_path / "single", device="cpu", progress=False)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "archscale.train", str(cfg), "--data",
               str(corpus_data), "--out", str(tmp_path / mode), "--device", "cpu", "--no-progress", "--json"]
    done = subprocess.run(command + (["--fsdp"] if mode == "fsdp" else []), capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["val_loss"] == pytest.approx(single.val_loss, abs=1e-4)
    balances = [[json.loads(line)["balance_loss"] for line in (run / "log.jsonl").read_text().splitlines()]
                for run in (tmp_path / "single", tmp_path / mode)]
    assert balances[1] == pytest.approx(balances[0], abs=1e-5)
