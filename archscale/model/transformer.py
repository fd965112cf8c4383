"""The one LLaMA-style decoder archscale trains and benchmarks.

RMSNorm, rotary position embeddings, grouped-query attention through
``F.scaled_dot_product_attention`` and a SwiGLU MLP, no biases: the shape
family of the dissertation's Chapter 6. A Mixture-of-Experts shape swaps each
layer's MLP for Mixtral's sparse block (:class:`MoE`: a router picks ``k`` of
``E`` SwiGLU experts per token); nothing else changes. It is built from an
:class:`~archscale.shapes.architecture.Architecture`, and its parameter count equals
:attr:`Architecture.n_params_total` exactly (a test checks it), so the sizes in
the scaling-law tables are the sizes that get trained.

Module names follow Hugging Face's ``LlamaForCausalLM`` (``embed_tokens``,
``layers.{i}.self_attn.q_proj``, ``input_layernorm``, ...), and RoPE uses HF's
"rotate half" layout, so exporting is a renaming (``model.`` prefix) and
nothing more (an MoE layer's stacked experts are split into Mixtral's
per-expert matrices on export). ``d_head`` is independent of ``d_model / n_heads``.

Two paths: ``forward(idx, targets)`` for training (causal attention over the
whole sequence), and ``allocate_kv_cache`` + ``forward_step(idx, start_pos)``
for inference (batched prefill, then token-by-token decode into a
preallocated cache).

On CPU the inference path runs on *frozen* weights, made by
``allocate_kv_cache`` and dropped by ``free_kv_cache``: q/k/v stacked into one
matrix and gate/up into another (one matmul where there were three and two,
which matters when a decode step multiplies a handful of rows), each RMSNorm
gain folded into the matrix after it, the query rows pre-scaled by
``1/sqrt(d_head)``, and every matrix run by the kernel that timed fastest for
its shape (:mod:`archscale.model.frozen_linear`). A single-token decode on CPU
attends with two batched matmuls over grouped heads instead of SDPA. The
parameters themselves are untouched: training, checkpoints and export never
see the frozen copies. On CUDA the inference path uses the parameters and
SDPA, as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archscale.io.errors import UserError
from archscale.shapes.architecture import Architecture
from archscale.shapes.hf_config import bundled_model_refusal
from archscale.model.frozen_linear import FrozenLinear, KernelChooser

INIT_STD = 0.02
CPP_COMPILERS = ("g++", "c++", "clang++")


def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot build this model on ``device_type`` here, or None if it can.

    On CPU, inductor compiles generated C++ and needs a compiler (``$CXX`` or
    one of :data:`CPP_COMPILERS` on the PATH); without one the first call would
    fail deep inside torch, after a run directory or store had been started.
    """
    import os
    import shutil

    if device_type != "cpu":
        return None
    if os.environ.get("CXX") or any(shutil.which(name) for name in CPP_COMPILERS):
        return None
    return "torch.compile on CPU needs a C++ compiler (g++ or clang++ on the PATH, or $CXX); install one or drop --compile"


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain; computed in float32 for stability."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the same arithmetic without two no-op casts (each an op per call)
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x / rms(x)`` for inference, without the gain (folded into the next matmul by the frozen path).

        The sum of squares comes from ``vector_norm`` (one pass, no
        ``x**2`` temporary the size of ``x``); it rounds differently from the
        mean of squares by about float32's epsilon.
        """
        x32 = x if x.dtype == torch.float32 else x.float()
        norm = torch.linalg.vector_norm(x32, dim=-1, keepdim=True)
        inverse_rms = norm.square_().div_(x.shape[-1]).add_(self.eps).rsqrt_()
        return x32 * inverse_rms if x.dtype == torch.float32 else (x32 * inverse_rms).to(x.dtype)


def rope_tables(d_head: int, length: int, theta: float, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape ``(length, d_head)``, in HF Llama's rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64, device=device).float() / d_head))
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated, so that rotate-half becomes a ``roll`` (see :func:`apply_rope`)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (last dim ``d_head``) by position; ``cos``/``sin_signed`` broadcast against it.

    HF's ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)``:
    ``rotate_half(x) * sin`` equals ``roll(x, half) * cat(-sin1, sin2)`` bit for
    bit (a sign moves from one factor to the other), and ``addcmul`` adds it
    in the same kernel as the multiply (one rounding fewer): three kernels
    where HF's form takes five.
    """
    rotated = torch.roll(x, x.shape[-1] // 2, dims=-1)
    out = torch.addcmul(x * cos, rotated, sin_signed)
    return out if out.dtype == x.dtype else out.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention with RoPE; q/o are ``d_q`` wide, k/v are ``d_kv`` wide."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = arch.n_heads, arch.n_kv_heads, arch.d_head
        self.q_proj = nn.Linear(arch.d_model, arch.d_q, bias=False)
        self.k_proj = nn.Linear(arch.d_model, arch.d_kv, bias=False)
        self.v_proj = nn.Linear(arch.d_model, arch.d_kv, bias=False)
        self.o_proj = nn.Linear(arch.d_q, arch.d_model, bias=False)
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.qkv_frozen: FrozenLinear | None = None
        self.o_frozen: FrozenLinear | None = None

    def freeze(self, chooser: KernelChooser, rows: int, norm_gain: torch.Tensor) -> None:
        """Stack q/k/v for the frozen path, with the preceding norm's gain folded into the columns
        and the query rows pre-scaled by ``1/sqrt(d_head)``; copy o."""
        scale = 1.0 / math.sqrt(self.d_head)
        stacked = [self.q_proj.weight * scale, self.k_proj.weight, self.v_proj.weight]
        self.qkv_frozen = chooser.freeze([weight * norm_gain for weight in stacked], rows)
        self.o_frozen = chooser.freeze([self.o_proj.weight], rows)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        """Attend causally; with ``start_pos`` given, write k/v into the cache and attend over it.

        ``cos``/``sin`` are ``(T, d_head)``; ``sin`` carries the sign of :func:`signed_sin`.
        """
        if start_pos is not None and self.qkv_frozen is not None:
            return self._forward_frozen(x, cos, sin, start_pos)
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.d_head).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if start_pos is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads)
        else:
            k, v = self._store(k, v, start_pos)
            out = self._attend_cached(q, k, v, start_pos, scale=1.0 / math.sqrt(self.d_head))
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head))

    def _forward_frozen(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The inference path on frozen weights: one q/k/v matmul, one RoPE call for q and k together.

        ``x`` is normalised without the norm's gain (folded into the weights);
        ``cos``/``sin`` are ``(T, 1, d_head)``, to broadcast over heads.
        """
        batch, length, _ = x.shape
        heads, kv_heads = self.n_heads, self.n_kv_heads
        qkv = self.qkv_frozen(x).view(batch, length, heads + 2 * kv_heads, self.d_head)
        qk = apply_rope(qkv[:, :, : heads + kv_heads], cos, sin)
        keys, values = self._store(qk[:, :, heads:].transpose(1, 2), qkv[:, :, heads + kv_heads :].transpose(1, 2), start_pos)
        out = self._attend_cached(qk[:, :, :heads].transpose(1, 2), keys, values, start_pos, scale=1.0)  # pre-scaled
        return self.o_frozen(out.transpose(1, 2).reshape(batch, length, heads * self.d_head))

    def _attend_cached(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start_pos: int,
                       scale: float) -> torch.Tensor:
        """``(B, heads, T, d_head)`` queries at ``start_pos`` over the cached prefix: SDPA, or matmuls for one CPU token."""
        length = q.shape[2]
        if length == 1 and q.device.type == "cpu":
            return self._decode_attention(q, keys, values, scale)
        mask, causal = self._mask(start_pos, length, q.device)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=self.n_heads != self.n_kv_heads)

    def _decode_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
        """One query position over the cached prefix as two batched matmuls; returns ``(B, heads, 1, d_head)``.

        The query heads that share a key/value head are stacked as rows
        (``(B, kv_heads, group, d_head)``: SDPA's ``enable_gqa`` pairs query
        head ``h`` with kv head ``h // group`` the same way), so keys and
        values are read in place from the cache, never repeated. SDPA's CPU
        kernel is built for long queries; for one it costs as much or more.
        """
        batch, length = q.shape[0], keys.shape[2]
        pairs, group = batch * self.n_kv_heads, self.n_heads // self.n_kv_heads
        keys = keys.reshape(pairs, length, self.d_head)  # views: the cache's batch and head strides merge
        values = values.reshape(pairs, length, self.d_head)
        scores = torch.bmm(q.reshape(pairs, group, self.d_head), keys.transpose(1, 2))
        if scale != 1.0:
            scores = scores.mul_(scale)
        if scores.dtype == torch.float32:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
        return torch.bmm(probs, values).view(batch, self.n_heads, 1, self.d_head)

    def _store(self, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values ``(B, kv_heads, T, d_head)`` at ``start_pos``; return the cached prefix through them."""
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError("forward_step needs model.allocate_kv_cache(...) first")
        batch, _, length, _ = k.shape
        end = start_pos + length
        if end > self.k_cache.shape[2] or batch > self.k_cache.shape[0]:
            raise RuntimeError(f"KV cache holds {self.k_cache.shape[0]} x {self.k_cache.shape[2]}; asked for {batch} x {end}")
        k_cache, v_cache = self.k_cache, self.v_cache
        if batch < k_cache.shape[0]:
            k_cache, v_cache = k_cache.narrow(0, 0, batch), v_cache.narrow(0, 0, batch)
        k_cache.narrow(2, start_pos, length).copy_(k)
        v_cache.narrow(2, start_pos, length).copy_(v)
        return k_cache.narrow(2, 0, end), v_cache.narrow(2, 0, end)

    @staticmethod
    def _mask(start_pos: int, length: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """SDPA's mask for ``length`` queries at ``start_pos`` over the cached prefix.

        A prefill from position 0 is plain causal attention; a single decode
        token sees the whole prefix; a chunk after a prefix needs an explicit
        mask because SDPA's ``is_causal`` aligns the top-left corner.
        """
        if start_pos == 0:
            return None, length > 1
        if length == 1:
            return None, False
        query_pos = torch.arange(start_pos, start_pos + length, device=device)[:, None]
        return torch.arange(start_pos + length, device=device)[None, :] <= query_pos, False


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.d_ff = arch.d_ff
        self.gate_proj = nn.Linear(arch.d_model, arch.d_ff, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.d_ff, bias=False)
        self.down_proj = nn.Linear(arch.d_ff, arch.d_model, bias=False)
        self.gate_up_frozen: FrozenLinear | None = None
        self.down_frozen: FrozenLinear | None = None

    def freeze(self, chooser: KernelChooser, rows: int, norm_gain: torch.Tensor) -> None:
        """Stack gate/up (the preceding norm's gain folded into the columns) and copy down for the frozen path."""
        self.gate_up_frozen = chooser.freeze([self.gate_proj.weight * norm_gain, self.up_proj.weight * norm_gain], rows)
        self.down_frozen = chooser.freeze([self.down_proj.weight], rows)

    def unfreeze(self) -> None:
        self.gate_up_frozen = self.down_frozen = None

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        if frozen and self.gate_up_frozen is not None and self.down_frozen is not None:
            gate_up = self.gate_up_frozen(x)  # a temporary: computed on in place
            hidden = F.silu(gate_up[..., : self.d_ff], inplace=True).mul_(gate_up[..., self.d_ff :])
            return self.down_frozen(hidden)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """``E`` SwiGLU experts of width ``expert_d_ff``, stacked: ``gate_proj`` and ``up_proj`` ``(E, F, d)``,
    ``down_proj`` ``(E, d, F)`` (expert ``e``'s matrices are row ``e``, laid out as ``nn.Linear`` weights).

    Stacked rather than ``E`` modules so that every step gives each tensor a gradient, whichever experts the
    batch reached (DDP needs every parameter to take part), and so the loop over experts indexes one tensor.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        shape = (arch.n_experts, arch.expert_d_ff, arch.d_model)
        self.gate_proj = nn.Parameter(torch.empty(shape))
        self.up_proj = nn.Parameter(torch.empty(shape))
        self.down_proj = nn.Parameter(torch.empty(arch.n_experts, arch.d_model, arch.expert_d_ff))

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j weights[t, j] * expert_{chosen[t, j]}(x[t])`` for every token row ``t`` of ``x`` ``(T, d)``.

        The ``T k`` (token, expert) pairs are sorted by expert and gathered once, each expert multiplies its
        contiguous slice (three matmuls), and the weighted outputs are added back to their tokens in one
        ``index_add``: the work of ``k`` dense MLPs of width ``F`` per token, not ``E`` of them.
        """
        k = chosen.shape[1]
        if not len(x):
            return torch.zeros_like(x)
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.gate_proj.shape[0]).tolist()
        tokens = order // k
        gathered = x[tokens]
        outputs, start = [], 0
        for expert, count in enumerate(counts):
            if count:
                rows = gathered[start : start + count]
                hidden = F.silu(F.linear(rows, self.gate_proj[expert])) * F.linear(rows, self.up_proj[expert])
                outputs.append(F.linear(hidden, self.down_proj[expert]))
                start += count
        weighted = torch.cat(outputs) * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add(0, tokens, weighted.to(x.dtype))


class MoE(nn.Module):
    """Mixtral's sparse MoE block: a linear router (``gate``, ``d -> E``), softmax over the ``E`` experts in
    float32, the top ``k`` kept and renormalised to sum to one, then the chosen experts' outputs weighted by them.

    This is transformers' ``MixtralSparseMoeBlock`` (router ``MixtralTopKRouter``) step for step, so an export
    computes the same function; ``gate`` keeps Mixtral's name for the router. Router jitter noise is not applied
    (``train`` refuses a config that asks for it).
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.top_k = arch.experts_per_token
        self.gate = nn.Linear(arch.d_model, arch.n_experts, bias=False)
        self.experts = Experts(arch)
        self.norm_gain: torch.Tensor | None = None

    def freeze(self, chooser: KernelChooser, rows: int, norm_gain: torch.Tensor) -> None:
        """The frozen inference path normalises without the gain; keep a copy to apply here (experts are not
        stacked or repacked: which rows each expert gets changes every step)."""
        self.norm_gain = norm_gain.detach().clone()

    def unfreeze(self) -> None:
        self.norm_gain = None

    def forward(self, x: torch.Tensor, frozen: bool = False,
                route: bool = False) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Route each position of ``x`` ``(..., d)``; with ``route``, also return ``(probabilities, chosen
        experts)``, ``(T, E)`` and ``(T, k)``, for the load-balancing loss (returned, not stored: FSDP and
        ``torch.compile`` see plain outputs)."""
        if frozen and self.norm_gain is not None:
            x = x * self.norm_gain
        flat = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.gate(flat).float(), dim=-1)
        top_weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        out = self.experts(flat, chosen, top_weights).view_as(x)
        return (out, (probs, chosen)) if route else out


def load_balancing_loss(routing: list[tuple[torch.Tensor, torch.Tensor]], n_experts: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss ``E * sum_i f_i P_i``, as transformers' ``load_balancing_loss_func``
    computes it for Mixtral: ``f_i`` the fraction of (token, slot) routings that chose expert ``i`` and ``P_i`` its
    mean router probability, both pooled over every MoE layer's tokens.

    ``f`` counts all ``k`` slots, so it sums to ``k``: a perfectly even router scores ``k`` (not 1), and a router
    that sends every token to the same experts scores up to ``E``. Only ``P`` carries a gradient.
    """
    device = routing[0][0].device
    counts = torch.zeros(n_experts, dtype=torch.float32, device=device)
    prob_sums = torch.zeros(n_experts, dtype=torch.float32, device=device)
    rows = 0
    for probs, chosen in routing:
        flat = chosen.reshape(-1)
        counts = counts.scatter_add(0, flat, torch.ones_like(flat, dtype=torch.float32))
        prob_sums = prob_sums + probs.sum(dim=0)
        rows += probs.shape[0]
    return n_experts * torch.sum((counts / rows) * (prob_sums / rows))


class Block(nn.Module):
    """Pre-norm decoder block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, arch: Architecture, norm_eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.d_model, norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.d_model, norm_eps)
        self.mlp = MoE(arch) if arch.is_moe else MLP(arch)

    def freeze(self, chooser: KernelChooser, rows: int) -> None:
        """Frozen attention and MLP weights, each with its norm's gain folded in."""
        self.self_attn.freeze(chooser, rows, self.input_layernorm.weight)
        self.mlp.freeze(chooser, rows, self.post_attention_layernorm.weight)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int | None = None,
                route: bool = False) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``route`` (an MoE layer, training) also returns the router's output (see :meth:`MoE.forward`)."""
        if start_pos is not None and self.self_attn.qkv_frozen is not None:  # gains live in the frozen weights
            x = x + self.self_attn(self.input_layernorm.normalize(x), cos, sin, start_pos)
            return x.add_(self.mlp(self.post_attention_layernorm.normalize(x), frozen=True))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start_pos)
        if route:
            out, routing = self.mlp(self.post_attention_layernorm(x), route=True)
            return x + out, routing
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """A decoder-only LLaMA-style language model of a given :class:`Architecture`, dense or Mixtral-style MoE."""

    def __init__(self, arch: Architecture, rope_theta: float = 500000.0, norm_eps: float = 1e-5, max_seq_len: int = 2048) -> None:
        super().__init__()
        refusal = bundled_model_refusal(arch)
        if refusal:  # never build another model than the shape (training, the torch backend)
            raise UserError(f"{arch.name or 'architecture'}: {refusal}; the bundled model is a LLaMA with full "
                            "attention and, optionally, Mixtral-style routed experts, and cannot represent it")
        self.arch, self.rope_theta = arch, rope_theta
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.layers = nn.ModuleList(Block(arch, norm_eps) for _ in range(arch.n_layers))
        self.norm = RMSNorm(arch.d_model, norm_eps)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        if arch.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._set_rope(max_seq_len)
        self.head_frozen: FrozenLinear | None = None
        self.kernels: KernelChooser | None = None
        self.apply(self._init_weights)
        residual_std = INIT_STD / math.sqrt(2 * arch.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """normal(0, 0.02) for every matrix (nanoGPT), each expert's included; norms stay at one."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        elif isinstance(module, Experts):
            for param in module.parameters():
                nn.init.normal_(param, mean=0.0, std=INIT_STD)

    def _set_rope(self, length: int, device: torch.device | None = None) -> None:
        cos, sin = rope_tables(self.arch.d_head, length, self.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", signed_sin(sin), persistent=False)

    def _rope(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The RoPE rows (cos, signed sin) for positions ``start .. start+length``, growing the table if needed."""
        if start + length > self.rope_cos.shape[0] or self.rope_cos.dtype != torch.float32:
            # grow the table, or rebuild it in float32 after a model.to(bfloat16)
            self._set_rope(max(start + length, self.rope_cos.shape[0]), self.rope_cos.device)
        return self.rope_cos[start : start + length], self.rope_sin[start : start + length]

    def n_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors counted once); optionally without embedding and head."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.arch.n_params_embedding
        return total

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                balance: bool = False) -> tuple[torch.Tensor, ...]:
        """Logits ``(B, T, vocab)`` and, given targets, the mean next-token cross-entropy in nats (else None).

        ``balance=True`` (an MoE shape) adds a third element, the load-balancing loss of this forward's routing
        (:func:`load_balancing_loss`); it is an argument of ``forward`` so that DDP and ``torch.compile`` see it,
        and each layer returns its routing rather than storing it, so that FSDP's per-block wrapping passes it on.
        """
        if balance and not self.arch.is_moe:
            raise ValueError("balance=True needs a Mixture-of-Experts shape (this model routes nothing)")
        cos, sin = self._rope(0, idx.shape[1])
        x = self.embed_tokens(idx)
        routing = []
        for layer in self.layers:
            if balance:
                x, routed = layer(x, cos, sin, route=True)
                routing.append(routed)
            else:
                x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        if balance:
            return logits, loss, load_balancing_loss(routing, self.arch.n_experts)
        return logits, loss

    # ---- inference with a preallocated KV cache ---------------------------------
    def allocate_kv_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None, freeze: bool = True,
                          tune_kernels: bool = True) -> None:
        """Preallocate ``(batch, n_kv_heads, max_len, d_head)`` keys and values in every layer.

        On CPU, ``freeze`` also makes the frozen weights :meth:`forward_step`
        runs on (see the module docstring), with each projection's kernel
        chosen by timing when ``tune_kernels`` (``self.kernels`` records the
        choices). ``freeze=False`` keeps the parameter path, which is what
        ``torch.compile`` should see (its own freezing packs the weights).
        Frozen weights are copies: parameter changes after this call are not
        seen by ``forward_step`` until the next one.
        """
        dtype = dtype or self.embed_tokens.weight.dtype
        device = torch.device(device) if device is not None else self.embed_tokens.weight.device
        shape = (batch, self.arch.n_kv_heads, max_len, self.arch.d_head)
        for layer in self.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self._rope(0, max_len)
        self._unfreeze()
        if freeze and self.lm_head.weight.device.type == "cpu":
            self._freeze(KernelChooser(tune=tune_kernels), batch)

    def _freeze(self, chooser: KernelChooser, rows: int) -> None:
        with torch.no_grad():
            for layer in self.layers:
                layer.freeze(chooser, rows)
            self.head_frozen = chooser.freeze([self.lm_head.weight * self.norm.weight], rows)
        self.kernels = chooser

    def free_kv_cache(self) -> None:
        """Drop the cache tensors and the frozen weights (they can be large)."""
        for layer in self.layers:
            layer.self_attn.k_cache = layer.self_attn.v_cache = None
        self._unfreeze()

    def _unfreeze(self) -> None:
        for layer in self.layers:
            layer.self_attn.qkv_frozen = layer.self_attn.o_frozen = None
            layer.mlp.unfreeze()
        self.head_frozen, self.kernels = None, None

    @torch.no_grad()
    def forward_step(self, idx: torch.Tensor, start_pos: int, last_only: bool = False) -> torch.Tensor:
        """Logits for tokens ``idx`` at positions ``start_pos ..``, reading and extending the cache.

        Call once with the whole prompt (``start_pos=0``, batched prefill),
        then once per generated token with ``start_pos`` = tokens so far.
        ``last_only`` computes logits for the last position alone, as a server
        does after a prefill: a 4096-token prompt's full logits would dwarf the model.
        """
        cos, sin = self._rope(start_pos, idx.shape[1])
        frozen = self.head_frozen is not None
        if frozen:  # the frozen path applies RoPE in (B, T, heads, d_head) layout
            cos, sin = cos[:, None], sin[:, None]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, start_pos)
        if last_only:
            x = x[:, -1:]
        if frozen:
            return self.head_frozen(self.norm.normalize(x))
        return self.lm_head(self.norm(x))
