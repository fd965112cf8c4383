"""One vLLM measurement in its own process: ``python -m archscale.bench.vllm_worker --config DIR ...``.

Why a process per (config, batch size): vLLM does not reliably give GPU
memory back when an ``LLM`` is deleted, so a sweep in one process would
measure later configs on a fragmented, partly occupied device. The parent
(:mod:`archscale.bench.vllm_backend`) starts this module, reads progress
lines from its stderr and the result from the JSON file named by
``--result``.

What is measured, as vLLM's own throughput benchmark does it but without a
tokenizer or hub access: ``LLM(load_format="dummy", skip_tokenizer_init=True)``
on the config directory; ``batch`` prompts of ``input_len`` random token ids
(fresh ones every repeat, and prefix caching off, so no repeat reuses another's
KV); ``SamplingParams(ignore_eos=True, max_tokens=output_len, detokenize=False)``;
one shorter warm-up ``generate`` excluded; each repeat timed around ``generate``
only. Tokens are counted from the returned outputs, not assumed.

This module imports vLLM only inside :func:`measure` and nothing heavy at
import time (no torch of its own), so it starts fast and can be tested
against a fake ``vllm`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from archscale.bench.records import summarize_repeats
from archscale.files import write_text

PROGRESS_PREFIX = "@@archscale-progress@@"
WARMUP_OUTPUT_TOKENS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m archscale.bench.vllm_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="Directory holding config.json.")
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--input-len", required=True, type=int)
    parser.add_argument("--output-len", required=True, type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--result", required=True, type=Path, help="Write the JSON result here.")
    return parser.parse_args(argv)


def random_prompts(batch: int, length: int, vocab: int, seed: int, prompt_type: Any) -> list:
    """``batch`` token-id prompts of ``length`` ids in ``[0, vocab)``, as ``TokensPrompt`` (or plain dicts)."""
    try:
        import numpy as np

        rows = np.random.default_rng(seed).integers(0, vocab, size=(batch, length)).tolist()
    except ImportError:
        import random

        rng = random.Random(seed)
        rows = [[rng.randrange(vocab) for _ in range(length)] for _ in range(batch)]
    make = prompt_type if prompt_type is not None else dict
    return [make(prompt_token_ids=row) for row in rows]


def count_tokens(outputs: list, input_len: int) -> tuple[int, int]:
    """(prompt tokens, generated tokens) summed over the returned request outputs."""
    prompt = sum(len(o.prompt_token_ids) if getattr(o, "prompt_token_ids", None) is not None else input_len
                 for o in outputs)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return prompt, generated


def progress(repeat: int, total: int) -> None:
    """One line the parent turns into a progress-bar step."""
    sys.stderr.write(f"{PROGRESS_PREFIX} {repeat}/{total}\n")
    sys.stderr.flush()


def device_facts() -> dict[str, Any]:
    """GPU name and torch version (vLLM has imported torch by now)."""
    try:
        import torch
    except ImportError:
        return {"device_name": "unknown", "torch_version": None}
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device_name": name, "torch_version": torch.__version__}


def _facts_if_loaded() -> dict[str, Any]:
    """Device facts for a failure record, only if torch is already loaded (a failure path imports nothing new)."""
    return device_facts() if "torch" in sys.modules else {}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build the engine, warm up, time ``repeats`` generate calls; the measured fields of a record."""
    import vllm
    from vllm import LLM, SamplingParams

    try:
        from vllm.inputs import TokensPrompt
    except ImportError:
        TokensPrompt = None

    config = json.loads((args.config / "config.json").read_text(encoding="utf-8"))
    vocab = int(config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size"))
    llm = LLM(model=str(args.config), load_format="dummy", skip_tokenizer_init=True, max_num_seqs=args.batch_size,
              max_model_len=args.input_len + args.output_len, dtype=args.dtype, tensor_parallel_size=args.tp,
              enforce_eager=args.enforce_eager, enable_prefix_caching=False, seed=args.seed)
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len,
                            detokenize=False)
    warmup = SamplingParams(n=1, temperature=1.0, top_p=1.0, ignore_eos=True,
                            max_tokens=min(args.output_len, WARMUP_OUTPUT_TOKENS), detokenize=False)
    llm.generate(random_prompts(args.batch_size, args.input_len, vocab, args.seed, TokensPrompt), warmup, use_tqdm=False)
    seconds, totals, generated = [], [], []
    for repeat in range(args.repeats):
        prompts = random_prompts(args.batch_size, args.input_len, vocab, args.seed + 1 + repeat, TokensPrompt)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
        prompt_tokens, output_tokens = count_tokens(outputs, args.input_len)
        totals.append(prompt_tokens + output_tokens)
        generated.append(output_tokens)
        progress(repeat + 1, args.repeats)
    return {
        **summarize_repeats(seconds, totals, generated),
        "output_tokens": round(sum(generated) / len(generated)),
        **device_facts(),
        "vllm_version": getattr(vllm, "__version__", None),
        "dtype": args.dtype,
        "status": "ok",
        "error": None,
    }


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write atomically, so the parent never reads half a file."""
    write_text(path, json.dumps(record))


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Kill this process group (the worker and vLLM's engine processes) if the parent bench process dies.

    The worker runs in its own session so the parent can end it as a group;
    the price is that a parent killed outright (SIGKILL, SIGTERM) would leave
    it holding the GPU. A daemon thread watching the parent pid closes that hole.
    """
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Measure, write the result (or the failure) to ``--result``; exit 0 on success, 1 on failure."""
    args = parse_args(argv)
    if os.getpgrp() == os.getpid():  # started by the bench parent as a session leader
        exit_with_parent()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["VLLM_NO_USAGE_STATS"] = "1"
    try:
        record, code = measure(args), 0
    except Exception as exc:  # any failure of vLLM is a recorded failure, with the traceback on stderr
        traceback.print_exc()
        message = " ".join(str(exc).split()) or "(no message)"
        record, code = {"status": "failed", "error": f"{type(exc).__name__}: {message}", **_facts_if_loaded()}, 1
    write_result(args.result, record)
    return code


if __name__ == "__main__":
    sys.exit(main())
