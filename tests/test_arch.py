"""Presets against the dissertation's numbers (REFERENCE.md section 3), config.json I/O and ``archscale arch``."""

from __future__ import annotations

import json

import pytest

from archscale.shapes.architecture import PRESETS, Architecture
from archscale.io.errors import UserError
from archscale.shapes.hf_config import architecture_from_config, load_architecture, write_hf_config

# name: (N_non_embed, r, GQA) as printed in the dissertation (Tables 6.2, 6.5, 6.6; Figures 6.5, 6.8).
PAPER = {
    "llama-3.2-1b": (973e6, 4.8, 4),
    "llama-3.2-3b": (2.82e9, 3.0, 3),
    "qwen2.5-3b": (2.77e9, 7.17, 8),
    "olmo-2-1b": (1.074e9, 3.0, 1),
    "surefire-1b": (965e6, 3.6, 9),
    "panda-1b": (975e6, 1.07, 4),
    "panda-3b": (2.82e9, 1.0, 3),
    "surefire-3b": (2.82e9, 1.0, 7),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_matches_paper_counts(name):
    n, r, gqa = PAPER[name]
    arch = PRESETS[name]
    assert arch.n_params_non_embedding == pytest.approx(n, rel=0.005)
    assert round(arch.r_mlp_attn, 2) == pytest.approx(r, abs=0.005)
    assert arch.gqa_group == gqa


@pytest.mark.parametrize("name, r", [("qwen3-0.6b", 1.5), ("qwen3-1.7b", 3.0), ("qwen3-4b", 2.85), ("llama-3.1-8b", 4.2)])
def test_preset_r_matches_paper_figures(name, r):
    assert PRESETS[name].r_mlp_attn == pytest.approx(r, abs=0.005)


@pytest.mark.parametrize("name, x", [("llama-3.2-1b", 0.066), ("panda-1b", 0.082), ("surefire-1b", 0.082),
                                     ("llama-3.2-3b", 0.058), ("panda-3b", 0.077), ("surefire-3b", 0.077)])
def test_d_over_sqrt_n_matches_table_6_2(name, x):
    assert round(PRESETS[name].d_over_sqrt_n, 3) == pytest.approx(x)


def test_panda_and_surefire_3b_have_r_exactly_one():
    for name in ("panda-3b", "surefire-3b"):
        arch = PRESETS[name]
        assert arch.mlp_params_per_layer == arch.attention_params_per_layer


def test_public_configs_use_true_hf_values():
    gemma = PRESETS["gemma-2-2b"]
    assert (gemma.d_head, gemma.vocab_size, gemma.tie_embeddings) == (256, 256000, True)
    assert gemma.d_model != gemma.n_heads * gemma.d_head  # 2304 vs 2048: why head_dim is explicit
    olmo = PRESETS["olmo-2-1b"]
    assert (olmo.vocab_size, olmo.tie_embeddings, olmo.n_kv_heads) == (100352, False, 32)
    assert PRESETS["llama-3.1-8b"].tie_embeddings is False and PRESETS["llama-3.2-1b"].tie_embeddings is True
    assert PRESETS["qwen2.5-7b"].vocab_size == 152064 and PRESETS["qwen3-4b"].vocab_size == 151936


def test_flops_per_token_is_appendix_c2():
    arch = PRESETS["llama-3.2-1b"]
    assert arch.flops_per_token(4096) == 2 * arch.n_params_non_embedding + 2 * 16 * 4096 * 32 * 64
    assert arch.kv_cache_bytes_per_token() == 2 * 16 * 8 * 64 * 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_config_round_trip(name):
    arch = PRESETS[name]
    assert architecture_from_config(write_hf_config(arch), name=name) == arch


def test_load_architecture_is_case_insensitive():
    assert load_architecture("Surefire-1B") is PRESETS["surefire-1b"]
    assert load_architecture(" LLAMA-3.2-1B ") is PRESETS["llama-3.2-1b"]


def test_load_architecture_reads_file_and_directory(tmp_path):
    arch = PRESETS["surefire-1b"]
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(write_hf_config(arch)))
    from_dir = load_architecture(str(folder))
    from_file = load_architecture(str(folder / "config.json"))
    assert from_dir.name == from_file.name == "my-model"
    for loaded in (from_dir, from_file):
        assert (loaded.n_params_non_embedding, loaded.gqa_group, loaded.tie_embeddings) == (
            arch.n_params_non_embedding, 9, True)


def test_load_architecture_reads_nested_text_config(tmp_path):
    path = tmp_path / "vlm.json"
    path.write_text(json.dumps({"model_type": "qwen3_vl", "tie_word_embeddings": True,
                                "text_config": write_hf_config(PRESETS["qwen3-4b"])}))
    assert load_architecture(str(path)).n_params_non_embedding == PRESETS["qwen3-4b"].n_params_non_embedding


def test_arch_and_train_read_a_multimodal_config_alike(cli, tmp_path, corpus_data):
    """One reader: the decoder under text_config is what arch counts and what train trains (train once refused it)."""
    tiny = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256)
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {"hidden_size": 32},
                                                    "text_config": write_hf_config(tiny)}))
    shown = cli("arch", folder, "--json")
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)[0]["N_non_embed"] == tiny.n_params_non_embedding
    trained = cli("train", folder, "--tokens", "2048", "--out", tmp_path / "run", "--device", "cpu", "--no-progress")
    assert trained.code == 0, trained.err
    run_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run_config["hidden_size"] == 64 and "vision_config" not in run_config  # the decoder's config, as export writes it


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UserError, match="unknown architecture 'llama-9'.*panda-1b"):
        load_architecture("llama-9")


def test_malformed_config_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="config.json: not valid JSON"):
        load_architecture(str(path))


def test_config_missing_keys_names_the_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(UserError, match="missing key 'num_attention_heads'|missing key 'num_hidden_layers'"):
        load_architecture(str(path))


def test_directory_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_architecture(str(tmp_path))


# ---- CLI ----------------------------------------------------------------------------
def test_cli_arch_prints_a_table(cli):
    result = cli("arch", "llama-3.2-1b", "surefire-1b")
    assert result.code == 0, result.err
    for text in ("llama-3.2-1b", "surefire-1b", "973.1M", "4.800", "0.0657", "32,768 B", "16,384 B"):
        assert text in result.out


def test_cli_arch_json(cli):
    result = cli("arch", "panda-1b", "qwen3-1.7b", "--json", "--context", "2048")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [row["name"] for row in rows] == ["panda-1b", "qwen3-1.7b"]
    panda = PRESETS["panda-1b"]
    assert rows[0]["N_non_embed"] == panda.n_params_non_embedding
    assert rows[0]["flops_per_token"] == panda.flops_per_token(2048)
    assert rows[0]["gqa"] == 4 and rows[1]["r_mlp_attn"] == pytest.approx(3.0)


def test_cli_arch_with_gpu_adds_a_throughput_estimate_naming_its_source(cli):
    result = cli("arch", "surefire-1b", "--gpu", "H100-SXM", "--batch", "32", "--json")
    assert result.code == 0, result.err
    estimate = json.loads(result.out)[0]["throughput"]
    assert estimate["gpu"] == "h100-sxm" and estimate["fits"] is True and estimate["total_tokens_per_s"] > 0
    assert estimate["profile"] == "vllm-h200-bf16-on-h100-sxm"  # none ships for the H100: the H200's, carried over
    result = cli("arch", "surefire-1b", "--gpu", "h200", "--batch", "32", "--json")
    assert json.loads(result.out)[0]["throughput"]["profile"] == "vllm-h200-bf16"


def test_a_batch_above_the_engines_max_num_seqs_fits_and_runs_in_waves(cli):
    """vLLM runs at most max_num_seqs (256) requests at once; a larger batch that memory holds is served in waves,
    not refused as out of memory (search refused every shape at --batch 257 for this reason)."""
    estimate = json.loads(cli("arch", "llama-3.2-1b", "--gpu", "h200", "--batch", "600", "--input-len", "512",
                              "--output-len", "128", "--json").out)[0]["throughput"]
    assert estimate["fits"] is True and estimate["concurrency"] == 256
    table = cli("arch", "llama-3.2-1b", "--gpu", "h200", "--batch", "600", "--input-len", "512", "--output-len", "128")
    assert "waves of 256, the engine's max_num_seqs" in " ".join(table.out.split())


def test_cli_arch_help_has_an_example(cli):
    result = cli("arch", "--help")
    assert result.code == 0
    assert "archscale arch llama-3.2-1b" in result.out


@pytest.mark.parametrize("args, message", [
    (("arch", "no-such-model"), "unknown architecture 'no-such-model'"),
    (("arch", "llama-3.2-1b", "--gpu", "tpu-v9"), "unknown GPU 'tpu-v9'"),
    (("arch", "missing/config.json"), "no such file"),
    (("arch", "llama-3.2-1b", "--batch", "6000"), "--batch needs --gpu"),  # was silently ignored
    (("arch", "llama-3.2-1b", "--profile", "none"), "--profile needs --gpu"),
])
def test_cli_arch_bad_input_is_one_line(cli, args, message):
    result = cli(*args)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err + result.out


def test_cli_arch_malformed_config_is_one_line(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 2048,,}')
    result = cli("arch", str(path))
    assert result.code == 2
    assert str(path) in result.err and "not valid JSON" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err


@pytest.mark.parametrize("key, value", [("hidden_size", 10**30), ("vocab_size", 10**19)])
def test_a_size_past_any_model_is_one_line_not_an_overflow(cli, tmp_path, key, value):
    """A config with a size no model has (a typo, a corrupted file) was read, then overflowed 64-bit arithmetic in
    the serving model or the results store with a traceback; it is refused where it is read, naming the size."""
    config = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 512, key: value}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for args in (("arch", tmp_path, "--gpu", "h200"),
                 ("bench", tmp_path, "--backend", "roofline", "--gpu", "h200", "--store", tmp_path / "b.sqlite")):
        result = cli(*args)
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
        assert "is larger than any model" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "b.sqlite").exists()


@pytest.mark.parametrize("args, reason", [
    (("mixtral-8x7b", "--gpu", "l4", "--batch", "1"), "weights alone do not fit: 1 x l4 (24 GiB)"),
    (("llama-3.2-1b", "--gpu", "h200", "--input-len", "1000000000"), "one request of 1,000,001,024 tokens does not fit"),
])
def test_an_estimate_that_serves_no_request_says_why(cli, args, reason):
    """It printed 0 output tok/s, "waves of 0" and inf s, and blamed the KV cache when the weights alone did not fit."""
    estimate = json.loads(cli("arch", *args, "--json").out)[0]["throughput"]
    assert estimate["concurrency"] == 0 and reason in estimate["no_request_fits"]
    table = " ".join(cli("arch", *args).out.split())
    assert "serves no request" in table and "waves of 0" not in table
