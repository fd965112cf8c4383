"""A fake ``vllm`` for testing archscale's vLLM worker without a GPU.

It implements the surface the worker uses (``LLM(**kwargs).generate(prompts,
sampling_params, use_tqdm=...)``, ``SamplingParams``, ``__version__``) and
checks what a real engine would reject: prompts must be token-id prompts
with ids in ``[0, vocab_size)``, each no longer than ``max_model_len -
max_tokens``. It returns ``max_tokens`` output ids per prompt. Every call
is logged as one JSON line to the file named by ``FAKE_VLLM_LOG`` so a test
can assert the arguments it received.

``FAKE_VLLM_MODE``: ``oom`` raises an out-of-memory error from ``generate``
(a recorded failure with a message); ``crash`` writes a traceback-like line
to stderr then kills the process without a result (a recorded failure from
the worker's stderr); ``hang`` sleeps for an hour (the parent's timeout
must end it); ``short`` returns one token fewer than asked (so a test can
tell counted tokens from assumed ones); anything else behaves. ``FAKE_VLLM_ONLY_HIDDEN=160``
applies the mode only to configs with that ``hidden_size``.
"""

from __future__ import annotations

import json
import os
import sys
import time

__version__ = "0.0.0+fake"


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError (not imported: the fake stays light)."""


def _log(event: dict) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event) + "\n")


class SamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.max_tokens = kwargs.get("max_tokens", 16)


class _Completion:
    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids


class _RequestOutput:
    def __init__(self, prompt_token_ids: list[int], token_ids: list[int]) -> None:
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [_Completion(token_ids)]


class LLM:
    def __init__(self, **kwargs) -> None:
        config_path = os.path.join(kwargs["model"], "config.json")
        with open(config_path, encoding="utf-8") as handle:
            self.config = json.load(handle)
        self.kwargs = kwargs
        _log({"event": "init", "kwargs": kwargs, "config": self.config, "env": {
            k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS")}})

    def generate(self, prompts, sampling_params, use_tqdm: bool = True):
        mode = os.environ.get("FAKE_VLLM_MODE", "")
        only = os.environ.get("FAKE_VLLM_ONLY_HIDDEN")
        if only and int(only) != int(self.config["hidden_size"]):
            mode = ""
        if mode == "oom":
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if mode == "hang":
            time.sleep(3600)
        if mode == "crash":
            sys.stderr.write("Fatal Python error: Segmentation fault\n")
            sys.stderr.write("[rank0]: ProcessGroupNCCL destroyed without destroy_process_group\n")
            sys.stderr.flush()
            os._exit(139)
        vocab = int(self.config["vocab_size"])
        limit = self.kwargs["max_model_len"] - sampling_params.max_tokens
        outputs = []
        for prompt in prompts:
            if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
                raise TypeError(f"expected a token-id prompt, got {type(prompt).__name__}")
            ids = prompt["prompt_token_ids"]
            if len(ids) > limit or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise ValueError("prompt too long or token id out of range")
            produced = sampling_params.max_tokens - (1 if mode == "short" else 0)
            outputs.append(_RequestOutput(list(ids), [i % vocab for i in range(produced)]))
        _log({"event": "generate", "n_prompts": len(prompts), "prompt_lengths": sorted({len(p["prompt_token_ids"]) for p in prompts}),
              "first_tokens": [p["prompt_token_ids"][0] for p in prompts], "sampling": sampling_params.kwargs,
              "use_tqdm": use_tqdm})
        time.sleep(0.01)
        return outputs
