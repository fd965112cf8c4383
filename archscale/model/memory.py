"""How many bytes running the bundled model needs: weights, KV cache and prefill workspace.

One set of arithmetic for the torch bench backend (:mod:`archscale.bench.torch_backend`, which refuses a shape
that will not fit before allocating it) and the training preflight (:mod:`archscale.train.preflight`).
"""

from __future__ import annotations

from archscale.shapes.architecture import Architecture

MIN_WORKSPACE_BYTES = 1 * 2**30
MAX_WORKSPACE_BYTES = 16 * 2**30
"""Prefill activations budget: half of what weights and KV cache leave free, within these bounds.

Prompts are prefilled in position chunks to stay under it; fewer, larger
chunks cost less (each chunk after the first attends through a mask).
"""
SLACK_BYTES = 0.5e9
"""Allocator fragmentation and small tensors outside the estimate."""


def prefill_bytes_per_token(arch: Architecture, input_len: int, element: int, masked: bool,
                            over_layers: str = "widest") -> int:
    """Transient bytes per prompt token during prefill: activations and masked scores (logits: last position only).

    A chunk after the first needs an explicit mask, and SDPA may then fall
    back to a kernel that materialises ``n_heads x input_len`` fp32 scores.
    ``over_layers`` is :func:`mlp_activation_bytes`'s: ``widest`` for a transient, ``mean`` for what every layer keeps.
    """
    activations = (4 * arch.d_model + 2 * arch.d_q + 2 * arch.d_kv) * element
    scores = arch.n_heads * input_len * 4 if masked else 0
    return int(activations + mlp_activation_bytes(arch, element, over_layers) + scores)


def mlp_activation_bytes(arch: Architecture, element: int, over_layers: str = "widest") -> float:
    """Bytes one token leaves in a layer's MLP: SwiGLU's gate, up and product, 3 x the width it passes through.

    An MoE token passes through ``k`` routed experts (and the shared ones), not one: ``3 (k expert_d_ff + shared
    widths)``, plus the ``k`` copies of the token the experts gather and return (``2 k d_model``) and the router's
    float32 probabilities over ``E``. Dense layers before the first MoE layer keep ``3 d_ff``. ``widest``: the
    largest layer (a transient, one layer at a time); ``mean``: the mean over layers (training keeps every layer's).
    """
    dense = 3 * arch.d_ff * element
    if not arch.is_moe:
        return float(dense)
    k = arch.experts_per_token
    width = k * arch.expert_d_ff + arch.n_shared_experts * arch.shared_expert_d_ff
    moe = (3 * width + 2 * k * arch.d_model) * element + 4 * arch.n_experts
    if over_layers == "widest":
        return float(max(moe, dense) if arch.first_dense_layers else moe)
    return (arch.first_dense_layers * dense + (arch.n_layers - arch.first_dense_layers) * moe) / arch.n_layers


def prefill_chunk(arch: Architecture, batch: int, input_len: int, element: int, budget: int) -> int:
    """Prompt positions per ``forward_step`` call: the whole prompt if its workspace fits ``budget``."""
    if batch * input_len * prefill_bytes_per_token(arch, input_len, element, masked=False) <= budget:
        return input_len
    per_position = batch * prefill_bytes_per_token(arch, input_len, element, masked=True)
    return max(1, min(input_len, budget // per_position))


def workspace_budget(arch: Architecture, batch: int, input_len: int, output_len: int, element: int,
                     available: int | None, weight_copies: int = 1) -> int:
    """Bytes for prefill transients: half of the memory left beside weights and KV cache, 1-16 GiB."""
    if available is None:
        return MIN_WORKSPACE_BYTES
    fixed = weight_copies * arch.weight_bytes(element) + batch * (input_len + output_len) * arch.kv_cache_bytes_per_token(element)
    return int(min(MAX_WORKSPACE_BYTES, max(MIN_WORKSPACE_BYTES, 0.5 * (available - fixed - SLACK_BYTES))))


def memory_needed(arch: Architecture, batch: int, input_len: int, output_len: int, element: int, chunk: int,
                  weight_copies: int = 1) -> int:
    """Bytes the run needs: weights (``weight_copies`` of them) + full KV cache + prefill workspace + decode logits.

    On CPU the inference path adds frozen copies of the weights (stacked, and
    packed for the chosen kernel): up to three copies in all.
    """
    weights = weight_copies * arch.weight_bytes(element)
    kv_cache = batch * (input_len + output_len) * arch.kv_cache_bytes_per_token(element)
    masked = chunk < input_len
    workspace = batch * chunk * prefill_bytes_per_token(arch, input_len, element, masked)
    decode_logits = batch * arch.vocab_size * 4
    return int(weights + kv_cache + workspace + decode_logits)
