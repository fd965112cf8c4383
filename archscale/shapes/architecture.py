"""The architecture model: one LLaMA-style decoder shape and its arithmetic.

Everything in archscale that needs a parameter count, an MLP-to-attention
ratio, inference FLOPs or KV-cache bytes asks an :class:`Architecture`. The
PyTorch model is built from one too, and a test checks that its
``sum(p.numel())`` equals :attr:`Architecture.n_params_total`, so there is one
parameter-count function in the project.

Shape conventions (the dissertation's Chapter 6): RMSNorm, RoPE, SwiGLU MLP,
grouped-query attention, and a per-head width ``d_head`` that is independent of
``d_model / n_heads`` (heads are added or removed to move ``r``). Optional fields
describe what real models add (Mixture-of-Experts layers, DeepSeek's latent
attention, sliding windows); a shape without them is the dense block above, and
the bundled model trains only that. Config files are read (and written) by
:mod:`archscale.shapes.hf_config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from archscale.io.errors import UserError


def _pick(condition, if_true, if_false):
    """``if_true`` where ``condition`` holds, else ``if_false``: a plain ``if`` on ints, ``np.where`` on arrays.

    The counts below serve one shape (ints, exact) and candidate columns (numpy arrays) alike.
    """
    if any(isinstance(value, np.ndarray) or hasattr(value, "to_numpy") for value in (condition, if_true, if_false)):
        return np.where(condition, if_true, if_false)
    return if_true if condition else if_false


def attention_params_per_layer(d_model, n_heads, n_kv_heads, d_head, kv_lora_rank=0, q_lora_rank=0,
                               qk_rope_head_dim=0, v_head_dim=0):
    """Q and O (``2 d n_heads d_head``) plus K and V (``2 d n_kv_heads d_head``); no biases.

    With multi-head latent attention (``kv_lora_rank`` > 0, DeepSeek-V2/V3) the keys and values come from a
    cached latent instead: ``d (kv_lora_rank + qk_rope_head_dim)`` down, ``kv_lora_rank n_heads (d_head -
    qk_rope_head_dim + v_head_dim)`` up (``d_head`` is the query/key width, nope + rope), queries through a rank
    ``q_lora_rank`` pair of matrices when it is set, and ``n_heads v_head_dim d`` out. The latent's own norms
    (``kv_lora_rank`` and ``q_lora_rank`` gains) are left out, like every norm beyond the two per block.

    Works on ints and on numpy arrays alike, so the candidate sweep, the roofline and the runs table use this
    very formula.
    """
    standard = 2 * d_model * d_head * (n_heads + n_kv_heads)
    if not np.any(kv_lora_rank):
        return standard
    query = _pick(q_lora_rank > 0, d_model * q_lora_rank + q_lora_rank * n_heads * d_head, d_model * n_heads * d_head)
    latent = (query + d_model * (kv_lora_rank + qk_rope_head_dim)
              + kv_lora_rank * n_heads * (d_head - qk_rope_head_dim + v_head_dim) + n_heads * v_head_dim * d_model)
    return _pick(kv_lora_rank > 0, latent, standard)


def mlp_params_per_layer(d_model, d_ff):
    """SwiGLU: gate, up and down projections, ``3 d d_ff``."""
    return 3 * d_model * d_ff


def moe_params_per_layer(d_model, routed, n_experts, expert_d_ff, n_shared_experts=0, shared_expert_d_ff=0,
                         shared_expert_gate=False):
    """One Mixture-of-Experts layer: ``routed`` SwiGLU experts of width ``expert_d_ff``, the always-on shared experts,
    the router (``d x n_experts``) and, Qwen2-MoE style, the shared expert's sigmoid gate (``d x 1``).

    ``routed`` is ``n_experts`` for the total and ``experts_per_token`` for what one token uses; the router and the
    shared experts run for every token either way.
    """
    return (routed * mlp_params_per_layer(d_model, expert_d_ff)
            + n_shared_experts * mlp_params_per_layer(d_model, shared_expert_d_ff)
            + d_model * n_experts + d_model * shared_expert_gate)


def non_embedding_params(n_layers, d_model, n_heads, n_kv_heads, d_head, d_ff, *, n_experts=0, experts_per_token=0,
                         expert_d_ff=0, n_shared_experts=0, shared_expert_d_ff=0, shared_expert_gate=False,
                         first_dense_layers=0, kv_lora_rank=0, q_lora_rank=0, qk_rope_head_dim=0, v_head_dim=0,
                         active=False):
    """Every parameter outside the embedding and output head: the one parameter count in archscale.

    Includes the two RMSNorm weight vectors per block and the final norm
    (``2 d`` per layer + ``d``): negligible for the ratios, but included so it
    equals what the PyTorch model counts.

    A Mixture-of-Experts shape (``n_experts`` > 1) has ``first_dense_layers`` dense layers (``d_ff`` wide) and
    MoE layers after them (:func:`moe_params_per_layer`); ``active=True`` counts what one token uses
    (``experts_per_token`` routed experts) instead of every expert. A dense shape is the default, and gives the
    same number either way.
    """
    attention = attention_params_per_layer(d_model, n_heads, n_kv_heads, d_head, kv_lora_rank, q_lora_rank,
                                           qk_rope_head_dim, v_head_dim)
    dense_mlp = mlp_params_per_layer(d_model, d_ff)
    per_layer = attention + dense_mlp + 2 * d_model
    dense = n_layers * per_layer + d_model
    if not np.any(n_experts > 1):
        return dense
    moe_layers = (n_layers - first_dense_layers) * (n_experts > 1)  # each swaps its dense MLP for the MoE one
    routed = experts_per_token if active else n_experts
    moe = moe_params_per_layer(d_model, routed, n_experts, expert_d_ff, n_shared_experts, shared_expert_d_ff,
                               shared_expert_gate)
    return dense + moe_layers * (moe - dense_mlp)


def mlp_attention_ratio(d_model, n_heads, n_kv_heads, d_head, d_ff):
    """MLP parameters over attention parameters (the paper's ``r``)."""
    return mlp_params_per_layer(d_model, d_ff) / attention_params_per_layer(d_model, n_heads, n_kv_heads, d_head)


def transformers_loadable(d_model, n_heads):
    """Whether transformers loads the shape's config: its Llama config refuses a ``hidden_size`` that is not a
    multiple of ``num_attention_heads`` even with ``head_dim`` given, and vLLM loads configs through it.

    Works on ints and on numpy arrays or columns alike (``--strict-hf``, search, export all apply this one rule).
    """
    return d_model % n_heads == 0


def require_even_head_dim(d_head: int, label: str) -> None:
    """The one rule on a head's width, applied wherever a shape is read (a config, a flag, a preset).

    Rotary embeddings rotate pairs of a head's channels, so archscale's model, vLLM and transformers all need an
    even ``d_head``: an odd one could be counted and estimated but never trained or served, so it is refused up front.
    """
    if d_head % 2:
        raise UserError(f"{label} {d_head} must be even (rotary embeddings rotate pairs of channels)")


# The optional fields of a shape beyond the dense Llama block, with their dense value: a shape column only when set
# (so a dense shape's columns, records and hashes are what they always were).
MOE_FIELDS = ("n_experts", "experts_per_token", "expert_d_ff", "n_shared_experts", "shared_expert_d_ff",
              "shared_expert_gate", "first_dense_layers")
LATENT_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim")
WINDOW_FIELDS = ("sliding_window", "n_sliding_layers")

MAX_DIMENSION = 2**31 - 1
"""The largest size of any one dimension archscale takes: far past any model, and what the serving model's and the
results store's 64-bit arithmetic can hold once sizes are multiplied together."""


def _require_representable(label: str, field_name: str, value: int) -> None:
    if value > MAX_DIMENSION:
        raise UserError(f"{label}: {field_name} {value:.3g} is larger than any model (at most {MAX_DIMENSION:,}); "
                        "check the config's value")


# What the serving model (and so bench's roofline, search and arch --gpu) cannot cost yet: (column, dense value, why).
_SERVING_UNMODELLED = (
    ("kv_lora_rank", 0, "latent-attention (MLA) serving cost is not modelled yet"),
    ("n_sliding_layers", 0, "the serving model has no sliding-window KV cache yet"),
)


def require_serving_modelled(columns, label: str) -> None:
    """Refuse, in one line, a shape (an Architecture's :meth:`~Architecture.shape_columns`, or a table of them) that
    the serving model would cost as a full-attention Llama: latent attention, a sliding window (experts it costs).

    Estimating such a shape so would be silently wrong (the KV cache of MLA 7x too large; a window's cache as if
    unbounded), so until those costs are modelled it is refused.
    """
    for column, dense_value, why in _SERVING_UNMODELLED:
        if column not in columns:
            continue
        values = np.atleast_1d(np.asarray(columns[column]))
        offending = np.flatnonzero(values > dense_value)
        if len(offending):
            raise UserError(f"{label}: {why} ({column} {int(values[offending[0]])})")


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer shape.

    Attributes:
        n_layers: number of decoder blocks.
        d_model: hidden size (residual stream width).
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads (GQA); must divide ``n_heads``.
        d_head: width of one head, query and key/value alike (with latent attention: the query/key width,
            nope + rope dims).
        d_ff: SwiGLU intermediate size (gate, up and down projections) of the dense layers.
        vocab_size: tokenizer vocabulary; only the embedding count uses it.
        tie_embeddings: whether the output projection shares the input embedding.
        name: a label for tables and plots.

    Mixture of Experts (all 0 for a dense shape; ``n_experts`` 0 or 1 is dense):
        n_experts: routed experts E per MoE layer.
        experts_per_token: routed experts k each token uses (1 <= k <= E).
        expert_d_ff: each routed expert's SwiGLU width.
        n_shared_experts, shared_expert_d_ff: always-on experts (Qwen-MoE, DeepSeek) and each one's width.
        shared_expert_gate: Qwen2-MoE's sigmoid gate on the shared expert (``d x 1`` per MoE layer).
        first_dense_layers: layers before the first MoE layer, with the dense ``d_ff`` MLP (DeepSeek's
            ``first_k_dense_replace``). With none, ``d_ff`` is unused and is set to ``expert_d_ff``, so two
            shapes that differ only there are one shape.

    Multi-head latent attention (DeepSeek; all 0 otherwise): ``kv_lora_rank`` (the cached latent's width),
    ``q_lora_rank`` (0: full-rank queries), ``qk_rope_head_dim`` (the rotary part of ``d_head``, cached beside the
    latent), ``v_head_dim``; ``n_kv_heads`` equals ``n_heads``.

    Sliding-window attention: ``n_sliding_layers`` of the layers attend to (and cache) only the last
    ``sliding_window`` tokens. Parameters are unaffected; FLOPs and the KV cache at a context are.
    """

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ff: int
    vocab_size: int = 128256
    tie_embeddings: bool = False
    name: str = ""
    n_experts: int = 0
    experts_per_token: int = 0
    expert_d_ff: int = 0
    n_shared_experts: int = 0
    shared_expert_d_ff: int = 0
    shared_expert_gate: bool = False
    first_dense_layers: int = 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int = 0
    n_sliding_layers: int = 0

    def __post_init__(self) -> None:
        label = f"architecture {self.name or '?'}"
        for field_name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab_size"):
            value = getattr(self, field_name)
            if not isinstance(value, (int,)) or isinstance(value, bool) or value <= 0:
                raise UserError(f"{label}: {field_name} must be a positive integer, got {value!r}")
            _require_representable(label, field_name, value)
        for field_name in MOE_FIELDS + LATENT_FIELDS + WINDOW_FIELDS:
            value = getattr(self, field_name)
            if field_name == "shared_expert_gate":
                if not isinstance(value, bool):
                    raise UserError(f"{label}: shared_expert_gate must be true or false, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"{label}: {field_name} must be a whole number >= 0, got {value!r}")
            else:
                _require_representable(label, field_name, value)
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"{label}: n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        require_even_head_dim(self.d_head, f"{label}: d_head")
        self._check_experts(label)
        self._check_latent(label)
        self._check_window(label)
        if self.is_moe and not self.first_dense_layers:
            object.__setattr__(self, "d_ff", self.expert_d_ff)  # unused without dense layers: one spelling

    def _check_experts(self, label: str) -> None:
        """k <= E, every width positive, at least one MoE layer; no expert field on a dense shape."""
        if self.experts_per_token > max(self.n_experts, 1):
            raise UserError(f"{label}: experts_per_token {self.experts_per_token} exceeds n_experts {self.n_experts} "
                            "(each token picks k of the E routed experts: k <= E)")
        if not self.is_moe:
            stray = [f for f in MOE_FIELDS[2:] if getattr(self, f)]
            if stray:
                raise UserError(f"{label}: {stray[0]} is set but n_experts is {self.n_experts} (a dense shape; "
                                "give n_experts > 1 for a Mixture of Experts)")
            return
        if self.experts_per_token < 1:
            raise UserError(f"{label}: experts_per_token must be at least 1 with n_experts {self.n_experts}")
        if self.expert_d_ff < 1:
            raise UserError(f"{label}: expert_d_ff must be a positive integer with n_experts {self.n_experts}")
        if self.n_shared_experts and self.shared_expert_d_ff < 1:
            raise UserError(f"{label}: shared_expert_d_ff must be a positive integer with n_shared_experts "
                            f"{self.n_shared_experts}")
        if not self.n_shared_experts and (self.shared_expert_d_ff or self.shared_expert_gate):
            raise UserError(f"{label}: shared_expert_d_ff / shared_expert_gate need n_shared_experts >= 1")
        if self.first_dense_layers >= self.n_layers:
            raise UserError(f"{label}: first_dense_layers {self.first_dense_layers} leaves no MoE layer of "
                            f"{self.n_layers}")

    def _check_latent(self, label: str) -> None:
        """Latent attention needs its rope and value widths, and one KV head per query head."""
        if not self.kv_lora_rank:
            stray = [f for f in LATENT_FIELDS[1:] if getattr(self, f)]
            if stray:
                raise UserError(f"{label}: {stray[0]} is set without kv_lora_rank (latent attention)")
            return
        if not 0 < self.qk_rope_head_dim < self.d_head or self.qk_rope_head_dim % 2:
            raise UserError(f"{label}: qk_rope_head_dim {self.qk_rope_head_dim} must be even and within d_head "
                            f"{self.d_head} (the query/key width is nope + rope)")
        if self.v_head_dim < 1:
            raise UserError(f"{label}: v_head_dim must be a positive integer with kv_lora_rank {self.kv_lora_rank}")
        if self.n_kv_heads != self.n_heads:
            raise UserError(f"{label}: latent attention has one key/value head per query head, got n_kv_heads "
                            f"{self.n_kv_heads} for n_heads {self.n_heads}")

    def _check_window(self, label: str) -> None:
        """A window needs layers that use it, and at most every layer does."""
        if bool(self.sliding_window) != bool(self.n_sliding_layers):
            raise UserError(f"{label}: sliding_window {self.sliding_window} and n_sliding_layers "
                            f"{self.n_sliding_layers} must be both set or both 0")
        if self.n_sliding_layers > self.n_layers:
            raise UserError(f"{label}: n_sliding_layers {self.n_sliding_layers} exceeds n_layers {self.n_layers}")

    # ---- what kind of shape -------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """Whether the shape routes tokens among experts (``n_experts`` > 1)."""
        return self.n_experts > 1

    @property
    def is_dense_llama(self) -> bool:
        """No experts, no latent attention, no sliding window: the bundled model's (and a Llama config's) family."""
        return not (self.is_moe or self.kv_lora_rank or self.n_sliding_layers)

    def _count_arguments(self) -> dict:
        """The optional fields, as :func:`non_embedding_params` takes them."""
        return {name: getattr(self, name) for name in MOE_FIELDS + LATENT_FIELDS}

    # ---- parameter counts -------------------------------------------------
    @property
    def d_q(self) -> int:
        """Total query width ``n_heads * d_head`` (also the output projection's input)."""
        return self.n_heads * self.d_head

    @property
    def d_kv(self) -> int:
        """Total key (or value) width ``n_kv_heads * d_head``."""
        return self.n_kv_heads * self.d_head

    @property
    def attention_params_per_layer(self) -> int:
        return attention_params_per_layer(self.d_model, self.n_heads, self.n_kv_heads, self.d_head, self.kv_lora_rank,
                                          self.q_lora_rank, self.qk_rope_head_dim, self.v_head_dim)

    @property
    def mlp_params_per_layer(self) -> int:
        """A dense layer's MLP (``3 d d_ff``); an MoE layer's is :func:`moe_params_per_layer`."""
        return mlp_params_per_layer(self.d_model, self.d_ff)

    @property
    def n_params_non_embedding(self) -> int:
        """Every non-embedding parameter, every expert included (see :func:`non_embedding_params`)."""
        return int(non_embedding_params(self.n_layers, self.d_model, self.n_heads, self.n_kv_heads, self.d_head,
                                        self.d_ff, **self._count_arguments()))

    @property
    def n_params_active_non_embedding(self) -> int:
        """Non-embedding parameters one token uses: k routed experts, the shared experts, the router, attention and
        the dense layers. Equal to :attr:`n_params_non_embedding` for a dense shape."""
        return int(non_embedding_params(self.n_layers, self.d_model, self.n_heads, self.n_kv_heads, self.d_head,
                                        self.d_ff, **self._count_arguments(), active=True))

    @property
    def n_params_embedding(self) -> int:
        """Input embedding, plus the output head when it is not tied."""
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.d_model

    @property
    def n_params_total(self) -> int:
        return self.n_params_non_embedding + self.n_params_embedding

    @property
    def n_params_active(self) -> int:
        """Parameters per token, embedding tables included (how Mixtral's 12.9B and Qwen3-30B-A3B's 3.3B count)."""
        return self.n_params_active_non_embedding + self.n_params_embedding

    def shape_columns(self) -> dict:
        """The shape as runs-table / candidate-table / bench-store columns (one spelling everywhere).

        The MoE, latent-attention and sliding-window columns appear only when set, so a dense shape's columns are
        the dense Llama ones and every table that reads them reads what it always did."""
        columns = {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads,
                   "n_kv_heads": self.n_kv_heads, "d_head": self.d_head, "d_ff": self.d_ff,
                   "vocab": self.vocab_size, "tie_embeddings": bool(self.tie_embeddings)}
        for group, present in ((MOE_FIELDS, self.is_moe), (LATENT_FIELDS, self.kv_lora_rank),
                               (WINDOW_FIELDS, self.n_sliding_layers)):
            if present:
                columns.update({name: getattr(self, name) for name in group})
        return columns

    # ---- the shape descriptors the laws use -------------------------------
    @property
    def r_mlp_attn(self) -> float:
        """MLP parameters over attention parameters (the paper's ``r``; a dense-shape descriptor)."""
        return self.mlp_params_per_layer / self.attention_params_per_layer

    @property
    def d_over_sqrt_n(self) -> float:
        """``d_model / sqrt(N_non_embed)``: hidden size normalised for model size."""
        return self.d_model / math.sqrt(self.n_params_non_embedding)

    @property
    def aspect_ratio(self) -> float:
        """``d_model / n_layers`` (Chapter 5's ``R``)."""
        return self.d_model / self.n_layers

    @property
    def gqa_group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def transformers_loadable(self) -> bool:
        """See :func:`transformers_loadable`."""
        return bool(transformers_loadable(self.d_model, self.n_heads))

    # ---- inference cost inputs ---------------------------------------------
    def attended_positions(self, context_len: int) -> int:
        """Cached positions one token attends to, summed over layers: ``context_len`` in a full-attention layer,
        at most ``sliding_window`` in a sliding one."""
        window = min(context_len, self.sliding_window) if self.n_sliding_layers else context_len
        return (self.n_layers - self.n_sliding_layers) * context_len + self.n_sliding_layers * window

    def flops_per_token(self, context_len: int) -> float:
        """Non-embedding inference FLOPs for one token attending to ``context_len`` tokens.

        The dissertation's Appendix C.2: ``2 N_non_embed + 2 n_layers T d_q``, with ``N`` the active parameters
        (k routed experts, not all of them) and ``n_layers T`` the positions attended (a sliding layer attends to
        at most its window).
        (That convention counts the score product ``q K^T``; the weighted sum
        over values is of the same size and left out, as the paper does.)
        """
        return 2.0 * self.n_params_active_non_embedding + 2.0 * self.attended_positions(context_len) * self.d_q

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Bytes cached per token across all layers: K and V per KV head, or, with latent attention, the one
        ``kv_lora_rank`` latent plus the ``qk_rope_head_dim`` rotary key (what DeepSeek's MLA caches).

        Per token of a full-attention cache: a sliding layer holds at most its window, see
        :meth:`kv_cache_bytes`."""
        return self.n_layers * self._kv_elements_per_layer_token * bytes_per_element

    def kv_cache_bytes(self, context_len: int, bytes_per_element: int = 2) -> int:
        """Bytes one sequence of ``context_len`` tokens caches: sliding layers keep only their window."""
        return self.attended_positions(context_len) * self._kv_elements_per_layer_token * bytes_per_element

    @property
    def _kv_elements_per_layer_token(self) -> int:
        """Elements one layer caches per token: K and V of each KV head, or MLA's latent plus its rotary key."""
        return (self.kv_lora_rank + self.qk_rope_head_dim) if self.kv_lora_rank else 2 * self.d_kv

    def weight_bytes(self, bytes_per_element: int = 2) -> int:
        """Bytes of every weight, embeddings included (what a server holds)."""
        return self.n_params_total * bytes_per_element


# ---- presets ------------------------------------------------------------------
# Public configs, copied from each model's Hugging Face ``config.json`` (repo in
# PRESET_SOURCES), and the dissertation's own models (Table 6.2 / 6.5 / 6.6).
# Only what Architecture models is kept: Qwen2.5's q/k/v biases, Qwen3's and
# OLMo-2's q/k norms and Gemma-2's extra norms and soft-capping are left out, so
# their parameter counts here are off by well under 0.1%. Experts, latent
# attention and Gemma-2's sliding window (every other layer, from layer 0) are
# kept; tests/test_real_configs.py reads each real config.json and checks it
# gives the preset, and the published parameter counts.
#
# The dissertation's Panda/Surefire models are "LLaMA-3.2 style" with the
# LLaMA-3.2 tokenizer (128256); like LLaMA-3.2-1B/3B we assume tied embeddings
# (the paper does not say; only N_embed depends on it). Their head counts are
# not printed in the paper: they are solved from d_model, d_ff, r and GQA with
# d_head fixed (64 at 1B, 128 at 3B). Panda-1B: 72/18 heads (Table B.1 v13).
# Surefire-1B: 36/4 (r 3.6, GQA 9). Panda-3B: attention 2*4096*128*(h+kv) equal
# to the MLP 3*4096*4096 (r = 1) gives h+kv = 48, with GQA 3: 36/12.
# Surefire-3B: h+kv = 48 with GQA 7: 42/6.

def _preset(name: str, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_head: int, d_ff: int,
            vocab_size: int, tie_embeddings: bool, **optional: int) -> Architecture:
    return Architecture(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_head,
                        d_ff=d_ff, vocab_size=vocab_size, tie_embeddings=tie_embeddings, name=name, **optional)


PRESETS: dict[str, Architecture] = {
    a.name: a
    for a in (
        _preset("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, True),
        _preset("llama-3.2-3b", 28, 3072, 24, 8, 128, 8192, 128256, True),
        _preset("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, False),
        _preset("qwen2.5-1.5b", 28, 1536, 12, 2, 128, 8960, 151936, True),
        _preset("qwen2.5-3b", 36, 2048, 16, 2, 128, 11008, 151936, True),
        _preset("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, False),
        _preset("qwen3-0.6b", 28, 1024, 16, 8, 128, 3072, 151936, True),
        _preset("qwen3-1.7b", 28, 2048, 16, 8, 128, 6144, 151936, True),
        _preset("qwen3-4b", 36, 2560, 32, 8, 128, 9728, 151936, True),
        _preset("olmo-2-1b", 16, 2048, 32, 32, 64, 8192, 100352, False),
        _preset("gemma-2-2b", 26, 2304, 8, 4, 256, 9216, 256000, True, sliding_window=4096, n_sliding_layers=13),
        _preset("gemma-2-9b", 42, 3584, 16, 8, 256, 14336, 256000, True, sliding_window=4096, n_sliding_layers=21),
        _preset("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, False,
                n_experts=8, experts_per_token=2, expert_d_ff=14336),
        _preset("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 768, 151936, False,
                n_experts=128, experts_per_token=8, expert_d_ff=768),
        _preset("olmoe-1b-7b", 16, 2048, 16, 16, 128, 1024, 50304, False,
                n_experts=64, experts_per_token=8, expert_d_ff=1024),
        _preset("deepseek-v2-lite", 27, 2048, 16, 16, 192, 10944, 102400, False,
                n_experts=64, experts_per_token=6, expert_d_ff=1408, n_shared_experts=2, shared_expert_d_ff=1408,
                first_dense_layers=1, kv_lora_rank=512, qk_rope_head_dim=64, v_head_dim=128),
        _preset("panda-1b", 16, 2560, 72, 18, 64, 4096, 128256, True),
        _preset("surefire-1b", 16, 2560, 36, 4, 64, 6144, 128256, True),
        _preset("panda-3b", 28, 4096, 36, 12, 128, 4096, 128256, True),
        _preset("surefire-3b", 28, 4096, 42, 6, 128, 4096, 128256, True),
    )
}

PRESET_SOURCES: dict[str, str] = {
    "llama-3.2-1b": "hf:meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "hf:meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "hf:meta-llama/Llama-3.1-8B",
    "qwen2.5-1.5b": "hf:Qwen/Qwen2.5-1.5B",
    "qwen2.5-3b": "hf:Qwen/Qwen2.5-3B",
    "qwen2.5-7b": "hf:Qwen/Qwen2.5-7B",
    "qwen3-0.6b": "hf:Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "hf:Qwen/Qwen3-1.7B",
    "qwen3-4b": "hf:Qwen/Qwen3-4B",
    "olmo-2-1b": "hf:allenai/OLMo-2-0425-1B",
    "gemma-2-2b": "hf:google/gemma-2-2b",
    "gemma-2-9b": "hf:google/gemma-2-9b",
    "mixtral-8x7b": "hf:mistralai/Mixtral-8x7B-v0.1",
    "qwen3-30b-a3b": "hf:Qwen/Qwen3-30B-A3B",
    "olmoe-1b-7b": "hf:allenai/OLMoE-1B-7B-0924",
    "deepseek-v2-lite": "hf:deepseek-ai/DeepSeek-V2-Lite",
    "panda-1b": "dissertation Table 6.2",
    "surefire-1b": "dissertation Table 6.2",
    "panda-3b": "dissertation Table 6.2",
    "surefire-3b": "dissertation Table 6.2",
}
