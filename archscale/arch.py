"""The architecture model: one LLaMA-style decoder shape and its arithmetic.

Everything in archscale that needs a parameter count, an MLP-to-attention
ratio, inference FLOPs or KV-cache bytes asks an :class:`Architecture`. The
PyTorch model is built from one too, and a test checks that its
``sum(p.numel())`` equals :attr:`Architecture.n_params_total`, so there is one
parameter-count function in the project.

Shape conventions (the dissertation's Chapter 6): RMSNorm, RoPE, SwiGLU MLP,
grouped-query attention, and a per-head width ``d_head`` that is independent of
``d_model / n_heads`` (heads are added or removed to move ``r``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from archscale.errors import UserError


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer shape.

    Attributes:
        n_layers: number of decoder blocks.
        d_model: hidden size (residual stream width).
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads (GQA); must divide ``n_heads``.
        d_head: width of one head, query and key/value alike.
        d_ff: SwiGLU intermediate size (gate, up and down projections).
        vocab_size: tokenizer vocabulary; only the embedding count uses it.
        tie_embeddings: whether the output projection shares the input embedding.
        name: a label for tables and plots.
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

    def __post_init__(self) -> None:
        for field_name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab_size"):
            value = getattr(self, field_name)
            if not isinstance(value, (int,)) or isinstance(value, bool) or value <= 0:
                raise UserError(f"architecture {self.name or '?'}: {field_name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise UserError(
                f"architecture {self.name or '?'}: n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}"
            )

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
        """Q and O (``2 d d_q``) plus K and V (``2 d d_kv``); no biases."""
        return 2 * self.d_model * self.d_q + 2 * self.d_model * self.d_kv

    @property
    def mlp_params_per_layer(self) -> int:
        """SwiGLU: gate, up and down projections, ``3 d d_ff``."""
        return 3 * self.d_model * self.d_ff

    @property
    def n_params_non_embedding(self) -> int:
        """Every parameter outside the embedding and output head.

        Includes the two RMSNorm weight vectors per block and the final norm
        (``2 d`` per layer + ``d``): they are negligible for the ratios but
        included so this equals what the PyTorch model counts.
        """
        per_layer = self.attention_params_per_layer + self.mlp_params_per_layer + 2 * self.d_model
        return self.n_layers * per_layer + self.d_model

    @property
    def n_params_embedding(self) -> int:
        """Input embedding, plus the output head when it is not tied."""
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.d_model

    @property
    def n_params_total(self) -> int:
        return self.n_params_non_embedding + self.n_params_embedding

    # ---- the shape descriptors the laws use -------------------------------
    @property
    def r_mlp_attn(self) -> float:
        """MLP parameters over attention parameters (the paper's ``r``)."""
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

    # ---- inference cost inputs ---------------------------------------------
    def flops_per_token(self, context_len: int) -> float:
        """Non-embedding inference FLOPs for one token attending to ``context_len`` tokens.

        The dissertation's Appendix C.2: ``2 N_non_embed + 2 n_layers T d_q``.
        (That convention counts the score product ``q K^T``; the weighted sum
        over values is of the same size and left out, as the paper does.)
        """
        return 2.0 * self.n_params_non_embedding + 2.0 * self.n_layers * context_len * self.d_q

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Bytes of K and V cached per token across all layers."""
        return 2 * self.n_layers * self.d_kv * bytes_per_element

    def weight_bytes(self, bytes_per_element: int = 2) -> int:
        """Bytes of every weight, embeddings included (what a server holds)."""
        return self.n_params_total * bytes_per_element

    # ---- Hugging Face config.json ---------------------------------------------
    def to_hf_config(self, max_position_embeddings: int = 8192, rope_theta: float = 500000.0) -> dict:
        """An HF ``LlamaConfig``-style dict; ``head_dim`` is written explicitly.

        transformers 5 refuses a Llama config whose ``hidden_size`` is not a
        multiple of ``num_attention_heads`` even with ``head_dim`` given; vLLM and
        archscale's own model read ``head_dim`` and accept it.
        """
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.d_head,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": rope_theta,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "bfloat16",
        }

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "", source: str = "config.json") -> "Architecture":
        """Read the shape from an HF-style config dict (LLaMA, Qwen2/3, OLMo-2, Gemma-2 keys)."""
        try:
            d_model = int(config["hidden_size"])
            n_heads = int(config["num_attention_heads"])
            return cls(
                n_layers=int(config["num_hidden_layers"]),
                d_model=d_model,
                n_heads=n_heads,
                n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
                d_head=int(config.get("head_dim") or d_model // n_heads),
                d_ff=int(config["intermediate_size"]),
                vocab_size=int(config.get("vocab_size", 128256)),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                name=name,
            )
        except KeyError as exc:
            raise UserError(f"{source}: missing key {exc.args[0]!r} (an HF-style config.json needs hidden_size, "
                            "intermediate_size, num_hidden_layers, num_attention_heads)") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: {exc}") from None
