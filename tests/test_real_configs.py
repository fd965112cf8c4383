"""Real models' config.json files, read as transformers reads them, or refused in one line naming the field.

The configs under ``tests/data/real_configs/`` are written by hand from each model's published ``config.json`` (the
repository is the preset's ``PRESET_SOURCES`` entry). Each must read as its preset, count as its model card says,
cache what the model caches, and be refused wherever archscale would compute another model (serving, training,
export) until that model exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from archscale.io.errors import UserError
from archscale.shapes.architecture import PRESETS, Architecture
from archscale.shapes.hf_config import architecture_from_config, read_hf_config
from archscale.shapes.hf_config import write_hf_config
from conftest import DATA
from helpers import one_line_error

CONFIGS = Path(__file__).parent / "data" / "real_configs"
FIT_1B = DATA / "fits" / "dissertation_1b_mult.json"

# name: (published total, published active or None, where it is published). Model cards give one decimal; the
# active figures leave out the router (d_model x E per MoE layer, 1-13M here), and DeepSeek's also the input
# embedding table (a lookup): with those left out as they are, every count rounds to the published figure.
PUBLISHED = {
    "llama-3.1-8b": (8.03e9, None, "hf:meta-llama/Llama-3.1-8B, 8.03B params"),
    "qwen2.5-7b": (7.61e9, None, "hf:Qwen/Qwen2.5-7B model card, 7.61B parameters"),
    "gemma-2-9b": (9.24e9, None, "hf:google/gemma-2-9b, 9.24B params (tied by model type)"),
    "mixtral-8x7b": (46.7e9, 12.9e9, "Mistral AI, 'Mixtral of experts': 46.7B total, 12.9B per token"),
    "qwen3-30b-a3b": (30.5e9, 3.3e9, "hf:Qwen/Qwen3-30B-A3B model card: 30.5B total, 3.3B activated"),
    "olmoe-1b-7b": (6.9e9, 1.3e9, "OLMoE paper (arXiv 2409.02060): 6.9B total, 1.3B active"),
    "deepseek-v2-lite": (15.7e9, 2.4e9, "hf:deepseek-ai/DeepSeek-V2-Lite model card: 15.7B total, 2.4B activated"),
}


def read(name: str, **changes) -> Architecture:
    """The real config, optionally with keys changed (None deletes a key), read as archscale reads a file."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return architecture_from_config(config, name=name, source=f"{name}.json")


def write(folder: Path, name: str, **changes) -> Path:
    """``folder/config.json``: the real config with keys changed."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    config.update(changes)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def refused_in_one_line(result, *fragments: str) -> None:
    assert one_line_error(result), (result.code, result.out, result.err)
    for fragment in fragments:
        assert fragment in result.err, result.err


# ---- read right -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_real_config_reads_as_its_preset_and_counts_as_published(name):
    total, active, _ = PUBLISHED[name]
    arch, _ = read_hf_config(CONFIGS / f"{name}.json", name=name)
    assert arch == PRESETS[name]
    assert arch.n_params_total == pytest.approx(total, rel=0.01)
    if active is None:
        assert not arch.is_moe and arch.n_params_active == arch.n_params_total
        return
    router = (arch.n_layers - arch.first_dense_layers) * arch.d_model * arch.n_experts
    card = arch.n_params_active - (arch.vocab_size * arch.d_model if name == "deepseek-v2-lite" else 0)
    assert round((card - router) / 1e9, 1) == active / 1e9  # to the card's precision, counted as the card counts
    assert card == pytest.approx(active, rel=0.025)  # the router in: 0.2% (Mixtral) to 2.1% (DeepSeek) off


def test_the_counts_of_an_moe_are_every_expert_in_total_and_k_per_token():
    mixtral = PRESETS["mixtral-8x7b"]
    expert = 3 * 4096 * 14336
    attention = 2 * 4096 * 128 * (32 + 8)
    per_layer = attention + 2 * 4096 + 4096 * 8  # norms, router
    assert mixtral.n_params_non_embedding == 32 * (per_layer + 8 * expert) + 4096
    assert mixtral.n_params_active_non_embedding == 32 * (per_layer + 2 * expert) + 4096
    assert mixtral.flops_per_token(0) == 2 * mixtral.n_params_active_non_embedding


def test_deepseek_counts_its_dense_first_layer_shared_experts_and_latent_attention():
    lite = PRESETS["deepseek-v2-lite"]
    attention = 2048 * 16 * 192 + 2048 * (512 + 64) + 512 * 16 * (128 + 128) + 16 * 128 * 2048
    moe = 64 * 3 * 2048 * 1408 + 2 * 3 * 2048 * 1408 + 2048 * 64
    assert lite.n_params_non_embedding == 27 * (attention + 2 * 2048) + 3 * 2048 * 10944 + 26 * moe + 2048
    assert lite.n_params_active_non_embedding - lite.n_params_non_embedding == -26 * (64 - 6) * 3 * 2048 * 1408


def test_kv_bytes_per_token_are_what_each_model_caches():
    assert read("mixtral-8x7b").kv_cache_bytes_per_token() == 2 * 32 * 8 * 128 * 2
    lite = read("deepseek-v2-lite")
    assert lite.kv_cache_bytes_per_token() == 27 * (512 + 64) * 2  # the latent and the rotary key, not per-head K/V
    assert lite.kv_cache_bytes_per_token() * 7 < 2 * 27 * 16 * 128 * 2  # what reading it as per-head K/V gave
    gemma = read("gemma-2-9b")
    per_layer_token = 2 * 8 * 256 * 2
    assert gemma.kv_cache_bytes(8192) == (21 * 8192 + 21 * 4096) * per_layer_token  # half the layers keep 4096
    assert gemma.kv_cache_bytes(1024) == 42 * 1024 * per_layer_token  # inside the window: every token
    assert gemma.flops_per_token(8192) == 2 * gemma.n_params_non_embedding + 2 * (21 * 8192 + 21 * 4096) * 16 * 256


def test_gemma_is_tied_by_its_model_type_and_untied_when_the_config_says_so():
    assert read("gemma-2-9b").tie_embeddings is True  # its config.json has no tie_word_embeddings
    untied = read("gemma-2-9b", tie_word_embeddings=False)
    assert untied.n_params_total == pytest.approx(10.16e9, rel=0.001)  # the misread, when that is the truth


def test_families_default_what_transformers_defaults():
    mistral = read("mixtral-8x7b", model_type="mistral", architectures=["MistralForCausalLM"],
                   num_local_experts=None, num_experts_per_tok=None, output_router_logits=None,
                   router_aux_loss_coef=None, sliding_window=None)
    assert (mistral.sliding_window, mistral.n_sliding_layers) == (4096, 32)  # MistralConfig: 4096 when absent
    qwen = read("qwen2.5-7b", use_sliding_window=True, sliding_window=4096, max_window_layers=20)
    assert (qwen.sliding_window, qwen.n_sliding_layers) == (4096, 8)  # layers 20..27
    assert read("qwen2.5-7b").n_sliding_layers == 0  # use_sliding_window false: the 131072 window is unused


def test_qwen_moe_reads_dense_layers_first_and_the_gated_shared_expert():
    first_two_dense = read("qwen3-30b-a3b", mlp_only_layers=[0, 1])
    assert (first_two_dense.first_dense_layers, first_two_dense.d_ff) == (2, 6144)
    config = json.loads((CONFIGS / "qwen3-30b-a3b.json").read_text())
    config.update(model_type="qwen2_moe", shared_expert_intermediate_size=5632)
    qwen2_moe = architecture_from_config(config, name="q2")
    assert (qwen2_moe.n_shared_experts, qwen2_moe.shared_expert_d_ff, qwen2_moe.shared_expert_gate) == (1, 5632, True)
    gate_and_shared = 48 * (3 * 2048 * 5632 + 2048)
    assert qwen2_moe.n_params_total - PRESETS["qwen3-30b-a3b"].n_params_total == gate_and_shared


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_preset_writes_a_config_that_reads_back_as_itself(name):
    arch = PRESETS[name]
    assert architecture_from_config(write_hf_config(arch), name=name) == arch


# ---- refused in one line, naming the field ---------------------------------------------------------------
@pytest.mark.parametrize("name, changes, fragment", [
    ("mixtral-8x7b", {"num_experts_per_tok": 9}, "num_experts_per_tok 9 exceeds num_local_experts 8"),
    ("mixtral-8x7b", {"moe_capacity_factor": 1.25}, "unknown routing field 'moe_capacity_factor'"),
    ("llama-3.1-8b", {"num_experts": 8}, "num_experts 8: model_type llama has no such expert setting"),
    ("qwen3-30b-a3b", {"decoder_sparse_step": 2}, "decoder_sparse_step 2"),
    ("qwen3-30b-a3b", {"mlp_only_layers": [3]}, "mlp_only_layers [3]"),
    ("qwen3-30b-a3b", {"use_sliding_window": True}, "use_sliding_window true"),
    ("deepseek-v2-lite", {"moe_layer_freq": 2}, "moe_layer_freq 2"),
    ("deepseek-v2-lite", {"topk_method": "noaux_tc"}, "topk_method 'noaux_tc'"),
    ("llama-3.1-8b", {"kv_lora_rank": 512}, "kv_lora_rank 512: latent attention is read only for deepseek_v2"),
    ("llama-3.1-8b", {"sliding_window": 4096}, "sliding_window 4096: model_type llama has no sliding-window"),
    ("llama-3.1-8b", {"model_type": "phi3"}, "model_type 'phi3' is not one archscale reads"),
    ("gemma-2-9b", {"num_key_value_heads": None}, "missing key 'num_key_value_heads'"),
])
def test_what_archscale_does_not_model_is_refused_naming_the_field(name, changes, fragment):
    with pytest.raises(UserError) as refusal:
        read(name, **changes)
    assert fragment in str(refusal.value) and f"{name}.json" in str(refusal.value)


def test_k_above_e_is_refused_on_the_command_line_and_in_the_model(cli, tmp_path):
    folder = write(tmp_path / "cfg", "mixtral-8x7b", num_experts_per_tok=9)
    refused_in_one_line(cli("arch", folder), "num_experts_per_tok 9 exceeds num_local_experts 8")
    with pytest.raises(UserError, match="experts_per_token 9 exceeds n_experts 8"):
        Architecture(2, 64, 4, 2, 16, 128, n_experts=8, experts_per_token=9, expert_d_ff=64)


def test_an_unknown_routing_field_is_refused_on_the_command_line(cli, tmp_path):
    folder = write(tmp_path / "cfg", "olmoe-1b-7b", expert_capacity=2)
    refused_in_one_line(cli("arch", folder), "unknown routing field 'expert_capacity'")


# ---- the verbs that would compute another model refuse it ----------------------------------------------------
def test_arch_shows_total_and_active_and_costs_an_moe_with_every_expert_in_memory(cli):
    shown = cli("arch", CONFIGS / "mixtral-8x7b.json", "--json")
    assert shown.code == 0, shown.err
    row = json.loads(shown.out)[0]
    assert (row["N_total"], row["N_active"]) == (PRESETS["mixtral-8x7b"].n_params_total,
                                                 PRESETS["mixtral-8x7b"].n_params_active)
    assert row["r_mlp_attn"] is None  # a dense-law coordinate, not an MoE's
    table = cli("arch", "mixtral-8x7b")
    assert "N active per token" in table.out and "MoE 8 experts, top-2" in table.out
    served = cli("arch", "mixtral-8x7b", "--gpu", "h200", "--batch", "8", "--json")
    assert served.code == 0, served.err
    estimate = json.loads(served.out)[0]["throughput"]
    assert estimate["memory_gb"] > PRESETS["mixtral-8x7b"].n_params_total * 2 / 1e9  # bf16 weights of every expert


@pytest.mark.parametrize("config, fragment", [
    ({"n_routed_experts": None}, "latent-attention (MLA) serving cost is not modelled yet (kv_lora_rank 512)"),
    ({}, "latent-attention (MLA) serving cost is not modelled yet (kv_lora_rank 512)"),  # experts are costed
])
def test_arch_refuses_a_serving_estimate_of_deepseeks_latent_attention(cli, tmp_path, config, fragment):
    folder = write(tmp_path / "lite", "deepseek-v2-lite", **config)
    assert cli("arch", folder).code == 0
    refused_in_one_line(cli("arch", folder, "--gpu", "h200"), fragment)


def test_a_sliding_window_is_noted_in_arch_and_refused_by_the_serving_model(cli):
    shown = cli("arch", "gemma-2-9b", "--context", "8192")
    assert shown.code == 0 and "sliding window 4096 on 21 layers" in shown.out
    refused_in_one_line(cli("arch", "gemma-2-9b", "--gpu", "h200"),
                        "the serving model has no sliding-window KV cache yet (n_sliding_layers 21)")


def test_bench_torch_refuses_an_moe_config_and_stores_nothing(cli, tmp_path):
    """The torch backend does not measure MoE shapes: an MoE config is refused before anything runs (roofline and
    vLLM cost and measure it: tests/test_serving_moe.py)."""
    store = tmp_path / "s.sqlite"
    result = cli("bench", CONFIGS / "mixtral-8x7b.json", "--backend", "torch", "--store", store, "--no-progress")
    refused_in_one_line(result, "--backend torch does not measure Mixture-of-Experts shapes")
    assert not store.exists()


def test_search_refuses_an_moe_reference(cli, tmp_path):
    result = cli("search", "--fit", FIT_1B, "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--head-dim", "64",
                 "--match", CONFIGS / "qwen3-30b-a3b.json")
    refused_in_one_line(result, "--match qwen3-30b-a3b: a Mixture-of-Experts reference needs a law that predicts MoE runs")


@pytest.mark.parametrize("name, changes, fragment", [
    ("qwen3-30b-a3b", {}, "model_type qwen3_moe"),  # Mixtral itself trains now (tests/test_train_moe.py)
    ("llama-3.1-8b", {}, "rope_scaling (llama3): RoPE scaling"),
    ("llama-3.1-8b", {"rope_scaling": None, "attention_bias": True}, "attention_bias True: biases"),
    ("qwen2.5-7b", {}, "model_type qwen2: its q, k and v projections have biases"),
    ("gemma-2-9b", {}, "sliding_window 4096 on 21 of 42 layers"),
    ("deepseek-v2-lite", {"n_routed_experts": None}, "kv_lora_rank 512: latent attention"),
    ("llama-3.1-8b", {"rope_scaling": None, "hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ("llama-3.1-8b", {"rope_scaling": None, "rope_theta": None}, "no rope_theta: give it"),
])
def test_train_refuses_what_the_bundled_model_is_not(cli, tmp_path, name, changes, fragment):
    folder = write(tmp_path / "cfg", name, **changes)
    result = cli("train", folder, "--device", "cpu", "--no-progress", "--out", tmp_path / "run")
    refused_in_one_line(result, fragment)
    assert not (tmp_path / "run").exists()


def test_train_still_trains_a_plain_llama_config(cli, tmp_path, corpus_data):
    """The same real Llama config without rope_scaling is the bundled model, shrunk to train here."""
    folder = write(tmp_path / "cfg", "llama-3.1-8b", rope_scaling=None, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    result = cli("train", folder, "--tokens", "2048", "--device", "cpu", "--no-progress", "--out", tmp_path / "run")
    assert result.code == 0, result.err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_cache) -> Path:
    """A finished run of a tiny plain Llama (trained once for the module; tests copy it)."""
    from archscale.train.config import TrainConfig, write_config_dir
    from archscale.train.loop import train

    tiny = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
    settings = TrainConfig(tokens=2048, seq_len=64, batch_size=8, micro_batch_size=4, lr_max=3e-3, warmup_steps=1,
                           eval_every=0, eval_tokens=1024, checkpoint_every=2, log_every=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
        folder = write_config_dir(tmp_path_factory.mktemp("trained") / "tiny", tiny, settings)
        train(folder, device="cpu", progress=False)
    return folder / "run"


@pytest.mark.parametrize("changes, fragment", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling (llama3)"),
    ({"attention_bias": True}, "attention_bias True: biases"),
    ({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}, "num_local_experts 4"),
])
def test_export_refuses_a_run_whose_config_the_bundled_model_is_not(cli, tmp_path, tiny_run, changes, fragment):
    """A run trained before train refused such configs still holds one: export refuses it, writing nothing."""
    from archscale.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

    run = shutil.copytree(tiny_run, tmp_path / "run")
    state = load_checkpoint(checkpoint_path(run))
    state["hf_config"] = {**state["hf_config"], **changes}
    save_checkpoint(checkpoint_path(run), state)
    refused_in_one_line(cli("export", run, "--out", tmp_path / "hf"), fragment)
    assert not (tmp_path / "hf").exists()
    assert cli("export", tiny_run, "--out", tmp_path / "plain").code == 0  # the run as trained exports



def test_the_bundled_model_cannot_be_built_for_a_shape_it_is_not():
    """Shared experts, latent attention, a sliding window: refused before any weight is allocated (routed experts
    alone, as in Mixtral, it builds: tests/test_train_moe.py)."""
    from archscale.model.transformer import Transformer

    for name in ("deepseek-v2-lite", "gemma-2-9b"):
        with pytest.raises(UserError):
            Transformer(PRESETS[name])
