"""The one LLaMA-style decoder archscale trains and benchmarks.

RMSNorm, rotary position embeddings, grouped-query attention through
``F.scaled_dot_product_attention`` and a SwiGLU MLP, no biases: the shape
family of the dissertation's Chapter 6. It is built from an
:class:`~archscale.arch.Architecture`, and its parameter count equals
:attr:`Architecture.n_params_total` exactly (a test checks it), so the sizes in
the scaling-law tables are the sizes that get trained.

Module names follow Hugging Face's ``LlamaForCausalLM`` (``embed_tokens``,
``layers.{i}.self_attn.q_proj``, ``input_layernorm``, ...), and RoPE uses HF's
"rotate half" layout, so exporting is a renaming (``model.`` prefix) and
nothing more. ``d_head`` is independent of ``d_model / n_heads``.

Two paths: ``forward(idx, targets)`` for training (causal attention over the
whole sequence), and ``allocate_kv_cache`` + ``forward_step(idx, start_pos)``
for inference (batched prefill, then token-by-token decode into a
preallocated cache).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archscale.arch import Architecture
from archscale.errors import UserError

INIT_STD = 0.02


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain; computed in float32 for stability."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_tables(d_head: int, length: int, theta: float, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape ``(length, d_head)``, in HF Llama's rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64, device=device).float() / d_head))
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, H, T, d_head)`` by position; ``cos``/``sin`` are ``(T, d_head)``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        """Attend causally; with ``start_pos`` given, write k/v into the cache and attend over it."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.d_head).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if start_pos is not None:
            k, v, mask, causal = self._use_cache(k, v, start_pos)
        gqa = self.n_heads != self.n_kv_heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head))

    def _use_cache(self, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Store the new keys/values at ``start_pos`` and return the cached prefix plus its mask.

        A prefill from position 0 is plain causal attention; a single decode
        token sees the whole prefix; a chunk after a prefix needs an explicit
        mask because SDPA's ``is_causal`` aligns the top-left corner.
        """
        if self.k_cache is None or self.v_cache is None:
            raise RuntimeError("forward_step needs model.allocate_kv_cache(...) first")
        batch, _, length, _ = k.shape
        end = start_pos + length
        if end > self.k_cache.shape[2] or batch > self.k_cache.shape[0]:
            raise RuntimeError(f"KV cache holds {self.k_cache.shape[0]} x {self.k_cache.shape[2]}; asked for {batch} x {end}")
        self.k_cache[:batch, :, start_pos:end] = k.to(self.k_cache.dtype)
        self.v_cache[:batch, :, start_pos:end] = v.to(self.v_cache.dtype)
        keys, values = self.k_cache[:batch, :, :end], self.v_cache[:batch, :, :end]
        if start_pos == 0:
            return keys, values, None, length > 1
        if length == 1:
            return keys, values, None, False
        query_pos = torch.arange(start_pos, end, device=k.device)[:, None]
        mask = torch.arange(end, device=k.device)[None, :] <= query_pos
        return keys, values, mask, False


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(arch.d_model, arch.d_ff, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.d_ff, bias=False)
        self.down_proj = nn.Linear(arch.d_ff, arch.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm decoder block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, arch: Architecture, norm_eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.d_model, norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.d_model, norm_eps)
        self.mlp = MLP(arch)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """A decoder-only LLaMA-style language model of a given :class:`Architecture`."""

    def __init__(self, arch: Architecture, rope_theta: float = 500000.0, norm_eps: float = 1e-5, max_seq_len: int = 2048) -> None:
        super().__init__()
        if arch.d_head % 2:
            raise UserError(f"architecture {arch.name or '?'}: d_head={arch.d_head} must be even for rotary embeddings")
        self.arch, self.rope_theta = arch, rope_theta
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.layers = nn.ModuleList(Block(arch, norm_eps) for _ in range(arch.n_layers))
        self.norm = RMSNorm(arch.d_model, norm_eps)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        if arch.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._set_rope(max_seq_len)
        self.apply(self._init_weights)
        residual_std = INIT_STD / math.sqrt(2 * arch.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """normal(0, 0.02) for every matrix (nanoGPT); norms stay at one."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def _set_rope(self, length: int, device: torch.device | None = None) -> None:
        cos, sin = rope_tables(self.arch.d_head, length, self.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rope(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The RoPE rows for positions ``start .. start+length``, growing the table if needed."""
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, T, vocab)`` and, given targets, the mean next-token cross-entropy in nats."""
        cos, sin = self._rope(0, idx.shape[1])
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    # ---- inference with a preallocated KV cache ---------------------------------
    def allocate_kv_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        """Preallocate ``(batch, n_kv_heads, max_len, d_head)`` keys and values in every layer."""
        dtype = dtype or self.embed_tokens.weight.dtype
        device = device or self.embed_tokens.weight.device
        shape = (batch, self.arch.n_kv_heads, max_len, self.arch.d_head)
        for layer in self.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self._rope(0, max_len)

    def free_kv_cache(self) -> None:
        """Drop the cache tensors (they can be large)."""
        for layer in self.layers:
            layer.self_attn.k_cache = layer.self_attn.v_cache = None

    @torch.no_grad()
    def forward_step(self, idx: torch.Tensor, start_pos: int, last_only: bool = False) -> torch.Tensor:
        """Logits for tokens ``idx`` at positions ``start_pos ..``, reading and extending the cache.

        Call once with the whole prompt (``start_pos=0``, batched prefill),
        then once per generated token with ``start_pos`` = tokens so far.
        ``last_only`` computes logits for the last position alone, as a server
        does after a prefill: a 4096-token prompt's full logits would dwarf the model.
        """
        cos, sin = self._rope(start_pos, idx.shape[1])
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, start_pos)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))
