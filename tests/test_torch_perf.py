"""The fast CPU inference path, the torch backend's dtype and thread handling, and honest training throughput."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F

from archscale.shapes.architecture import Architecture
from archscale.bench.sweep import resolve_targets, run_sweep
from archscale.bench.types import BenchOptions
from archscale.bench.torch_backend import build_model, cpu_half_precision_problem, generate, resolve_dtype
from archscale.io.errors import UserError
from archscale.model.frozen_linear import FrozenLinear, KernelChooser, candidate_kernels
from archscale.model.transformer import Transformer, apply_rope, rope_tables, signed_sin
from archscale.train.config import TrainConfig, write_config_dir

SHAPES = [
    Architecture(2, 160, 6, 2, 32, 256, vocab_size=300),  # GQA, d_model % n_heads != 0
    Architecture(2, 160, 6, 2, 32, 256, vocab_size=300, tie_embeddings=True),
    Architecture(3, 96, 3, 3, 24, 200, vocab_size=64),  # plain multi-head attention
    Architecture(2, 128, 8, 1, 16, 192, vocab_size=256),  # one kv head for eight query heads
]
NO_BF16_CPU = {"cpu_name": "Old CPU", "avx2": True, "avx512_bf16": False, "amx_bf16": False,
               "avx512_fp16": False, "amx_fp16": False}


def _decode(model: Transformer, idx: torch.Tensor, **cache) -> torch.Tensor:
    """Logits of every position through the cache: a prefill, a chunk after a prefix, then one token at a time."""
    model.allocate_kv_cache(idx.shape[0], idx.shape[1] + 2, **cache)
    pieces = [model.forward_step(idx[:, :9], 0), model.forward_step(idx[:, 9:13], 9)]
    pieces += [model.forward_step(idx[:, t : t + 1], t) for t in range(13, idx.shape[1])]
    model.free_kv_cache()
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("arch", SHAPES, ids=["gqa", "tied", "mha", "mqa"])
def test_frozen_cpu_decode_gives_the_training_forward_logits(arch, one_thread):
    """The frozen, kernel-tuned inference path and the parameter path both reproduce ``forward``'s logits."""
    torch.manual_seed(0)
    model = Transformer(arch).eval()
    idx = torch.randint(0, arch.vocab_size, (3, 22))
    with torch.no_grad():
        full, _ = model(idx)
    frozen = _decode(model, idx)
    unfrozen = _decode(model, idx, freeze=False)
    torch.testing.assert_close(frozen, full, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(unfrozen, full, atol=2e-5, rtol=1e-4)
    assert model.head_frozen is None and model.layers[0].mlp.gate_up_frozen is None  # freed with the cache


def test_frozen_weights_are_built_and_tuned_on_cpu():
    arch = SHAPES[0]
    model = Transformer(arch).eval()
    model.allocate_kv_cache(2, 16)
    attention = model.layers[0].self_attn
    assert attention.qkv_frozen.shape == (arch.d_q + 2 * arch.d_kv, arch.d_model)
    assert model.layers[0].mlp.gate_up_frozen.shape == (2 * arch.d_ff, arch.d_model)
    # one timing per distinct (out, in, rows, dtype): qkv, o, gate/up, down and the head; the layers share them
    assert len(model.kernels.choices) == 5
    assert set(model.kernels.choices.values()) <= set(candidate_kernels(attention.q_proj.weight))
    model.free_kv_cache()


@pytest.mark.parametrize("rows", [1, 4])
def test_every_kernel_computes_the_same_product(rows):
    """oneDNN- and MKL-packed weights give F.linear's result, for the rows they were packed for and others (a prefill)."""
    torch.manual_seed(1)
    weights = [torch.randn(48, 40), torch.randn(24, 40)]
    reference = torch.cat(weights)
    frozen = FrozenLinear(weights, rows)
    for kernel in candidate_kernels(reference):
        frozen.use(kernel)
        for shape in ((rows, 1, 40), (rows, 7, 40)):
            x = torch.randn(*shape)
            torch.testing.assert_close(frozen(x), F.linear(x, reference), atol=1e-5, rtol=1e-5)
    weights[0].add_(1.0)  # a frozen projection is a copy: later parameter changes do not leak in
    frozen.use("linear")
    x = torch.randn(rows, 1, 40)
    assert not torch.allclose(frozen(x), F.linear(x, torch.cat(weights)))


def test_kernel_choice_is_the_fastest_timed():
    chooser = KernelChooser()
    frozen = chooser.freeze([torch.randn(64, 32)], rows=2)
    (key, timings), = chooser.timings.items()
    assert chooser.choices[key] == min(timings, key=timings.get) == frozen.kernel
    assert set(timings) == set(candidate_kernels(frozen.weight)) and all(t > 0 for t in timings.values())
    untuned = KernelChooser(tune=False).freeze([torch.randn(64, 32)], rows=2)
    assert untuned.kernel == "linear"


def test_rope_by_roll_is_hf_rotate_half():
    """The roll form of RoPE is HF's rotate-half arithmetic: the rotated term bit for bit, the sum to a rounding."""
    torch.manual_seed(2)
    cos, sin = rope_tables(32, 40, 10000.0)
    x = torch.randn(2, 3, 40, 32)
    rotated = torch.cat((-x[..., 16:], x[..., :16]), dim=-1)
    assert torch.equal(torch.roll(x, 16, dims=-1) * signed_sin(sin), rotated * sin)
    torch.testing.assert_close(apply_rope(x, cos, signed_sin(sin)), x * cos + rotated * sin, atol=1e-6, rtol=1e-6)


def test_greedy_generation_is_unchanged_by_the_fast_path(one_thread):
    """What the benchmark decodes: the same greedy tokens with frozen weights as with the parameters."""
    arch = Architecture(2, 128, 4, 2, 32, 256, vocab_size=512)
    model = build_model(arch, 40, torch.device("cpu"), "float32", seed=3)
    prompts = torch.randint(0, arch.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    tokens = {}
    for freeze in (True, False):
        steps = []

        def step(idx, start, last_only=False):
            logits = model.forward_step(idx, start, last_only=last_only)
            steps.append(logits[:, -1].argmax(-1))
            return logits

        with torch.inference_mode():
            model.allocate_kv_cache(4, 40, freeze=freeze)
            generate(step, prompts, 16, 24, lambda: None)
            model.free_kv_cache()
        tokens[freeze] = torch.stack(steps, dim=1)
    assert torch.equal(tokens[True], tokens[False])


# ---- dtype and threads -------------------------------------------------------------
def test_bf16_on_a_cpu_without_native_bf16_is_refused_with_the_reason(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: NO_BF16_CPU)
    config = write_config_dir(tmp_path / "tiny", SHAPES[0])
    store = tmp_path / "out.sqlite"
    for flag in ("bf16", "fp16"):
        r = cli("bench", config, "--device", "cpu", "--dtype", flag, "--store", store, "--no-progress")
        lines = [line for line in r.err.splitlines() if line.strip()]
        assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.err, r.err
        assert f"--dtype {flag} on CPU needs AVX512" in lines[0] and "Old CPU" in lines[0] and "--dtype float32" in lines[0]
    assert not store.exists()


def test_bf16_is_accepted_on_a_cpu_with_avx512_bf16_or_amx():
    cpu = torch.device("cpu")
    assert cpu_half_precision_problem("bfloat16", {**NO_BF16_CPU, "avx512_bf16": True}) is None
    assert cpu_half_precision_problem("bfloat16", {**NO_BF16_CPU, "amx_bf16": True}) is None
    assert "AVX512_FP16" in cpu_half_precision_problem("float16", {**NO_BF16_CPU, "amx_bf16": True})
    assert resolve_dtype(None, cpu) == "float32" and resolve_dtype("fp32", cpu) == "float32"


def test_threads_are_used_recorded_in_every_row_and_restored(cli, tmp_path):
    config = write_config_dir(tmp_path / "tiny", SHAPES[2])
    before = torch.get_num_threads()
    seen = []
    real = Transformer.forward_step

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Transformer, "forward_step", spy)
        options = BenchOptions(backend="torch", device="cpu", batch_sizes=(1, 2), input_len=8, output_len=3,
                               repeats=1, threads=1)
        result = run_sweep(resolve_targets([str(config)]), options, tmp_path / "out.sqlite")
    assert [r["threads"] for r in result.records] == [1, 1] and set(seen) == {1}
    assert torch.get_num_threads() == before
    r = cli("bench", config, "--device", "cpu", "--batch-sizes", "1", "--input-len", "8", "--output-len", "3",
            "--repeats", "1", "--store", tmp_path / "cli.sqlite", "--no-progress", "--json")
    assert r.code == 0, r.err
    assert [row["threads"] for row in json.loads(r.out)] == [torch.get_num_threads()]  # the default is recorded too


@pytest.mark.parametrize("args, fragment", [
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--threads", "2", "--backend", "roofline", "--gpu", "h100-sxm"], "--threads sets the torch backend"),
])
def test_bad_threads_are_one_line(cli, tmp_path, args, fragment):
    config = write_config_dir(tmp_path / "tiny", SHAPES[2])
    r = cli("bench", config, *args, "--store", tmp_path / "out.sqlite", "--no-progress")
    assert r.code == 2 and fragment in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "out.sqlite").exists()


def test_compile_without_a_cpp_compiler_is_one_line_before_anything_runs(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    config = write_config_dir(tmp_path / "tiny", SHAPES[2])
    r = cli("bench", config, "--device", "cpu", "--compile", "--store", tmp_path / "out.sqlite", "--no-progress")
    assert r.code == 2 and "needs a C++ compiler" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "out.sqlite").exists()
    with pytest.raises(UserError, match=r"needs a C\+\+ compiler"):
        _train(tmp_path, "train-run", compile_model=True)
    assert not (tmp_path / "train-run").exists()


# ---- training throughput ------------------------------------------------------------
TINY = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
TINY_TRAIN = TrainConfig(tokens=12 * 512, seq_len=64, batch_size=8, micro_batch_size=8, lr_max=3e-3, warmup_steps=2,
                         eval_every=0, eval_tokens=2048, checkpoint_every=0, log_every=4)


def _train(tmp_path, name, data=None, **kwargs):
    from archscale.train.loop import train

    config = write_config_dir(tmp_path / f"{name}-config", TINY, TINY_TRAIN)
    return train(config, data, tmp_path / name, progress=False, device="cpu", **kwargs)


def test_first_steps_are_reported_apart_from_steady_tokens_per_s(tmp_path, corpus_data, monkeypatch, one_thread):
    """A slow first step (as a compile is) shows in startup_s, not in tokens/s or MFU."""
    from archscale.train.loop import STARTUP_STEPS, Trainer, train_flops_per_token

    real_step = Trainer.train_step
    pause = 2.0

    def slow_first(self):
        if self.step == 0:
            time.sleep(pause)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", slow_first)
    result = _train(tmp_path, "run", corpus_data, peak_tflops=1.0)
    steady_steps = result.steps - STARTUP_STEPS
    steady_seconds = steady_steps * TINY_TRAIN.tokens_per_step / result.tokens_per_s
    assert result.startup_steps == STARTUP_STEPS and result.startup_s >= pause
    assert steady_seconds < pause  # the pause is not in the steady rate ...
    assert result.mfu == pytest.approx(result.tokens_per_s * train_flops_per_token(TINY, TINY_TRAIN.seq_len) / 1e12)
    row = json.loads((tmp_path / "run" / "result.json").read_text())
    assert row["startup_s"] == pytest.approx(result.startup_s) and row["compiled"] is False
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"] and log[-1]["tokens_per_s"] == pytest.approx(result.tokens_per_s)
    assert log[-1]["startup_steps"] == STARTUP_STEPS


def test_compile_flag_overrides_train_json_without_changing_the_recipe(tmp_path, corpus_data, one_thread, cli):
    """``--no-compile`` beats ``compile: true`` in train.json, and the config hash (the recipe) stays the same."""
    config = write_config_dir(tmp_path / "cfg", TINY, TINY_TRAIN.replace(compile=True))
    plain = write_config_dir(tmp_path / "plain", TINY, TINY_TRAIN)
    r = cli("train", config, "--data", corpus_data, "--device", "cpu", "--no-compile", "--no-progress", "--json")
    assert r.code == 0, r.err
    row = json.loads(r.out)
    assert row["compiled"] is False and row["startup_steps"] == 2 and row["tokens_per_s"] > 0
    r = cli("train", plain, "--data", corpus_data, "--device", "cpu", "--no-progress")
    assert r.code == 0 and "tokens/s (after 2 warm-up steps, " in r.out, r.out
    from archscale.train.loop import resolve_run

    assert resolve_run(config).recipe_hash != resolve_run(plain).recipe_hash  # train.json differs ...
    assert row["recipe_hash"] == resolve_run(config).recipe_hash  # ... but the flag is not part of the recipe
