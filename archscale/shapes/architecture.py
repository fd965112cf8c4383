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

from archscale.io.errors import UserError


def attention_params_per_layer(d_model, n_heads, n_kv_heads, d_head):
    """Q and O (``2 d n_heads d_head``) plus K and V (``2 d n_kv_heads d_head``); no biases.

    Works on ints and on numpy arrays alike, so the candidate sweep, the
    roofline and the runs table use this very formula.
    """
    return 2 * d_model * d_head * (n_heads + n_kv_heads)


def mlp_params_per_layer(d_model, d_ff):
    """SwiGLU: gate, up and down projections, ``3 d d_ff``."""
    return 3 * d_model * d_ff


def non_embedding_params(n_layers, d_model, n_heads, n_kv_heads, d_head, d_ff):
    """Every parameter outside the embedding and output head: the one parameter count in archscale.

    Includes the two RMSNorm weight vectors per block and the final norm
    (``2 d`` per layer + ``d``): negligible for the ratios, but included so it
    equals what the PyTorch model counts.
    """
    per_layer = (attention_params_per_layer(d_model, n_heads, n_kv_heads, d_head)
                 + mlp_params_per_layer(d_model, d_ff) + 2 * d_model)
    return n_layers * per_layer + d_model


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
        require_even_head_dim(self.d_head, f"architecture {self.name or '?'}: d_head")

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
        return attention_params_per_layer(self.d_model, self.n_heads, self.n_kv_heads, self.d_head)

    @property
    def mlp_params_per_layer(self) -> int:
        return mlp_params_per_layer(self.d_model, self.d_ff)

    @property
    def n_params_non_embedding(self) -> int:
        """See :func:`non_embedding_params`."""
        return non_embedding_params(self.n_layers, self.d_model, self.n_heads, self.n_kv_heads, self.d_head, self.d_ff)

    @property
    def n_params_embedding(self) -> int:
        """Input embedding, plus the output head when it is not tied."""
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.d_model

    @property
    def n_params_total(self) -> int:
        return self.n_params_non_embedding + self.n_params_embedding

    def shape_columns(self) -> dict:
        """The shape as runs-table / candidate-table / bench-store columns (one spelling everywhere)."""
        return {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads, "d_head": self.d_head, "d_ff": self.d_ff,
                "vocab": self.vocab_size, "tie_embeddings": bool(self.tie_embeddings)}

    # ---- the shape descriptors the laws use -------------------------------
    @property
    def r_mlp_attn(self) -> float:
        """MLP parameters over attention parameters (the paper's ``r``)."""
        return mlp_attention_ratio(self.d_model, self.n_heads, self.n_kv_heads, self.d_head, self.d_ff)

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
        """Read the shape from an HF-style config dict (LLaMA, Qwen2/3, OLMo-2, Gemma-2 keys).

        Every field read is checked here and a bad one is refused naming ``source`` and the field, because
        a silent fallback computes the wrong model: ``num_key_value_heads: 0`` is not MHA, ``head_dim: 0``
        is not hidden/heads, and the string ``"false"`` is not false. Only an absent or null key takes its default
        (``num_key_value_heads``: MHA; ``head_dim``: hidden/heads; ``tie_word_embeddings``: false)."""
        d_model = _config_count(config, "hidden_size", source)
        n_heads = _config_count(config, "num_attention_heads", source)
        n_kv_heads = _config_count(config, "num_key_value_heads", source, default=n_heads)
        if n_heads % n_kv_heads:
            raise UserError(f"{source}: num_key_value_heads {n_kv_heads} does not divide num_attention_heads {n_heads} "
                            "(each KV head serves a whole group of query heads)")
        if config.get("head_dim") is None and d_model < n_heads:
            raise UserError(f"{source}: no head_dim, and hidden_size {d_model} / num_attention_heads {n_heads} is below 1; "
                            "give head_dim")
        d_head = _config_count(config, "head_dim", source, default=d_model // n_heads)
        require_even_head_dim(d_head, f"{source}: head_dim" if config.get("head_dim") is not None
                              else f"{source}: no head_dim is given, and hidden_size / num_attention_heads =")
        tie = config.get("tie_word_embeddings")
        if tie is not None and not isinstance(tie, bool):
            raise UserError(f"{source}: tie_word_embeddings must be true or false, got {tie!r}")
        for key in ("rope_theta", "rms_norm_eps"):  # what the training loop reads besides the shape
            value = config.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise UserError(f"{source}: {key} must be a positive number, got {value!r}")
        if config.get("max_position_embeddings") is not None:
            _config_count(config, "max_position_embeddings", source)
        return cls(
            n_layers=_config_count(config, "num_hidden_layers", source),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            d_head=d_head,
            d_ff=_config_count(config, "intermediate_size", source),
            vocab_size=_config_count(config, "vocab_size", source, default=128256),
            tie_embeddings=bool(tie),
            name=name,
        )


def _config_count(config: dict, key: str, source: str, default: int | None = None) -> int:
    """A count from an HF config: a positive whole number (``2048`` or ``2048.0``), never silently truncated.

    An absent or null key takes ``default``; without one it is refused as missing.
    """
    value = config.get(key)
    if value is None:
        if default is None:
            raise UserError(f"{source}: missing key {key!r} (an HF-style config.json needs hidden_size, "
                            "intermediate_size, num_hidden_layers, num_attention_heads)")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise UserError(f"{source}: {key} must be a whole number, got {value!r}")
    if value <= 0:
        raise UserError(f"{source}: {key} must be a positive whole number, got {int(value)}")
    return int(value)


def decoder_config(config: dict) -> dict:
    """The keys of the decoder: the config itself, or a multimodal config's ``text_config``.

    A multimodal config (a vision-language model) keeps its text model under ``text_config``; the decoder
    is what archscale counts, trains and serves, so every reader of a config.json takes it from there,
    with the top level's ``tie_word_embeddings`` when it has one.
    """
    text = config.get("text_config")
    if "hidden_size" in config or not isinstance(text, dict):
        return config
    return {**text, "tie_word_embeddings": config.get("tie_word_embeddings", text.get("tie_word_embeddings"))}


def read_hf_config(path, name: str) -> tuple[Architecture, dict]:
    """Read a ``config.json``: its decoder's shape and the decoder's keys, checked (the one reader of config files).

    ``arch``, ``bench``, ``search --match`` and ``train`` all read configs through here, so they accept and
    refuse the same files.
    """
    from archscale.io.files import read_json  # files imports errors only; imported here to keep arch dependency-free

    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
    config = decoder_config(config)
    return Architecture.from_hf_config(config, name=name, source=str(path)), config


# ---- presets ------------------------------------------------------------------
# Public configs, copied from each model's Hugging Face ``config.json`` (repo in
# PRESET_SOURCES), and the dissertation's own models (Table 6.2 / 6.5 / 6.6).
# Only what Architecture models is kept: Qwen2.5's q/k/v biases, Qwen3's and
# OLMo-2's q/k norms and Gemma-2's extra norms and soft-capping are left out, so
# their parameter counts here are off by well under 0.1%.
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
            vocab_size: int, tie_embeddings: bool) -> Architecture:
    return Architecture(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_head,
                        d_ff=d_ff, vocab_size=vocab_size, tie_embeddings=tie_embeddings, name=name)


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
        _preset("gemma-2-2b", 26, 2304, 8, 4, 256, 9216, 256000, True),
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
    "panda-1b": "dissertation Table 6.2",
    "surefire-1b": "dissertation Table 6.2",
    "panda-3b": "dissertation Table 6.2",
    "surefire-3b": "dissertation Table 6.2",
}


def load_architecture(spec: str) -> Architecture:
    """Resolve a preset name (case-insensitive), a ``config.json`` path, or a directory holding one.

    Paths win over preset names only when they exist, so a stray file called
    ``panda-1b`` in the working directory is read rather than shadowed; any
    other spec that looks like a path (has a separator or ends in ``.json``)
    and does not exist is reported as a missing file rather than as an unknown
    preset, which would be a confusing message.
    """
    from pathlib import Path

    path = Path(spec).expanduser()
    if path.is_dir():
        return _architecture_from_file(path / "config.json", name=path.name)
    if path.is_file():
        return _architecture_from_file(path, name=path.parent.name if path.name == "config.json" else path.stem)
    key = spec.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    if "/" in spec or "\\" in spec or spec.lower().endswith(".json"):
        raise UserError(f"{spec}: no such file or directory (expected a config.json or a directory holding one)")
    raise UserError(f"unknown architecture {spec!r}: give a config.json path or one of {', '.join(PRESETS)}")


def _architecture_from_file(path, name: str) -> Architecture:
    """Read an HF ``config.json`` (see :func:`read_hf_config`)."""
    if not path.is_file():
        raise UserError(f"{path}: no config.json there")
    return read_hf_config(path, name)[0]
