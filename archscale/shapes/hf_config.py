"""Hugging Face ``config.json``: the one reader (and writer) of model configs.

Every field of a config that changes the parameter count, the FLOPs, the KV cache or the forward pass is either
read into the :class:`~archscale.shapes.architecture.Architecture` or refused in one line naming it, because a
field read wrong computes another model with exit 0 (Mixtral counted as a dense 7B, DeepSeek's latent KV cache 7x
too large, Gemma-2 untied). ``arch``, ``bench``, ``search --match``, ``train`` and ``export`` all read configs
here, so they accept and refuse the same files.

What is read, per ``model_type`` (:data:`FAMILIES`; the defaults are transformers' config classes'):

* the dense block (hidden size, heads, KV heads, head width, ``intermediate_size``, vocabulary) of every family;
* experts: Mixtral (``num_local_experts``), OLMoE (``num_experts``; both with ``intermediate_size`` as the expert
  width), Qwen2/3-MoE (``num_experts``, ``moe_intermediate_size``, Qwen2-MoE's gated shared expert, dense layers
  first via ``mlp_only_layers``), DeepSeek-V2 (``n_routed_experts``, ``n_shared_experts``,
  ``first_k_dense_replace``); other layouts (``decoder_sparse_step`` > 1, ``moe_layer_freq`` > 1, scattered
  ``mlp_only_layers``) and any routing-looking key archscale does not know are refused;
* latent attention (DeepSeek-V2's ``kv_lora_rank`` ...): its parameters and its cache (latent + rotary key);
* sliding windows: Mistral/Mixtral (every layer), Qwen2/3 (``use_sliding_window``, layers from
  ``max_window_layers``), Gemma-2 (every other layer), Gemma-3 (``sliding_window_pattern``), or ``layer_types``;
* tied embeddings: ``tie_word_embeddings``, else the family's default (Gemma: tied; the others: untied).

Biases (``attention_bias``, ``mlp_bias``, Qwen2's implicit q/k/v biases) and extra norm vectors (q/k norms,
Gemma-2's sandwich norms, MLA's latent norms) are left out of the count: at most about 0.01% of any model here
(Qwen2.5-7B's q/k/v biases: 28 x 4,608 = 129k of 7.6B); ``rope_scaling`` and the activation change no count.
All of these change the forward pass, so :func:`require_bundled_model` refuses them for ``train`` and ``export``.
An unknown ``model_type`` is refused: its layout (a two-matrix MLP, biases, a fused projection) could differ from
every count here. A config without ``model_type`` is read as a Llama config (what archscale itself writes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from archscale.io.errors import UserError
from archscale.shapes.architecture import PRESETS, Architecture, require_even_head_dim

LLAMA = "llama"


@dataclass(frozen=True)
class Family:
    """How one ``model_type`` spells what archscale reads, and what its forward pass has beyond a Llama.

    ``experts``: the expert layout's spelling (``mixtral``, ``olmoe``, ``qwen2_moe``, ``qwen3_moe``, ``deepseek``)
    or None. ``window``: the sliding-window spelling (``all``: every layer, ``all_4096``: the same with
    transformers' 4096 default when the key is absent, ``qwen``, ``gemma2``, ``gemma3``, ``refused``) or None (no
    window). ``head_dim``: the family's default head width (None: hidden / heads). ``mha_default``: an absent
    ``num_key_value_heads`` means one per query head (other families default to a fixed number, so it must be
    given). ``differs``: what the forward pass has that archscale's bundled Llama lacks, implied by the type alone.
    """

    tie_default: bool = False
    experts: str | None = None
    window: str | None = None
    head_dim: int | None = None
    mha_default: bool = False
    latent: bool = False
    differs: str = ""


_QK_NORMS = "q and k are normalised per head (q_norm, k_norm)"
_GEMMA = "Gemma scales the embedding by sqrt(hidden_size), normalises with (1 + weight) and uses a gelu MLP"

FAMILIES: dict[str, Family] = {
    "llama": Family(mha_default=True),
    "mistral": Family(window="all_4096"),
    "mixtral": Family(experts="mixtral", window="all"),
    "qwen2": Family(window="qwen", differs="its q, k and v projections have biases"),
    "qwen3": Family(window="qwen", head_dim=128, differs=_QK_NORMS),
    "qwen2_moe": Family(experts="qwen2_moe", window="refused", differs="experts and q/k/v biases"),
    "qwen3_moe": Family(experts="qwen3_moe", window="refused", differs=f"experts, and {_QK_NORMS}"),
    "olmo2": Family(mha_default=True, differs=f"{_QK_NORMS} over all heads, and norms follow each sublayer"),
    "olmoe": Family(experts="olmoe", mha_default=True, differs=f"experts, and {_QK_NORMS} over all heads"),
    "deepseek_v2": Family(experts="deepseek", mha_default=True, latent=True, differs="latent attention and experts"),
    "gemma": Family(tie_default=True, head_dim=256, differs=_GEMMA),
    "gemma2": Family(tie_default=True, window="gemma2", head_dim=256,
                     differs=f"{_GEMMA}, norms after each sublayer and soft-capped logits"),
    "gemma3_text": Family(tie_default=True, window="gemma3", head_dim=256, differs=f"{_GEMMA}, and {_QK_NORMS}"),
}

# Keys that set how many experts a layer has or which layers have them: refused on a family that does not read them.
_EXPERT_KEYS = {
    "mixtral": {"num_local_experts", "num_experts_per_tok"},
    "olmoe": {"num_experts", "num_experts_per_tok"},
    "qwen2_moe": {"num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                  "decoder_sparse_step", "mlp_only_layers"},
    "qwen3_moe": {"num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                  "mlp_only_layers"},
    "deepseek": {"n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
                 "first_k_dense_replace", "moe_layer_freq"},
}
_STRUCTURAL_EXPERT_KEYS = set().union(*_EXPERT_KEYS.values())
# Routing keys that change how experts are weighted, not how many there are: the counts do not depend on them.
_ROUTING_BEHAVIOUR_KEYS = {"norm_topk_prob", "output_router_logits", "router_aux_loss_coef", "router_jitter_noise",
                           "routed_scaling_factor", "topk_method", "n_group", "topk_group", "scoring_func",
                           "aux_loss_alpha", "seq_aux"}
_ROUTING_LOOKING = re.compile(r"expert|rout|moe|topk|top_k|n_group|sparse")
_LATENT_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
_WINDOW_KEYS = ("sliding_window", "use_sliding_window", "layer_types", "sliding_window_pattern")
_DEEPSEEK_TOPK = (None, "greedy", "group_limited_greedy")
_SILU = ("silu", "swish")


# ---- reading ---------------------------------------------------------------------------------------------------
def read_hf_config(path, name: str) -> tuple[Architecture, dict]:
    """Read a ``config.json``: its decoder's shape and the decoder's keys, checked (the one reader of config files).

    ``arch``, ``bench``, ``search --match`` and ``train`` all read configs through here, so they accept and
    refuse the same files.
    """
    from archscale.io.files import read_json  # files imports errors only

    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
    config = decoder_config(config)
    return architecture_from_config(config, name=name, source=str(path)), config


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


def family_of(config: dict, source: str) -> tuple[str, Family]:
    """The config's ``model_type`` and how archscale reads it; an unknown one is refused (its layout is unknown)."""
    model_type = config.get("model_type")
    if model_type is None:
        return LLAMA, FAMILIES[LLAMA]
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise UserError(f"{source}: model_type {model_type!r} is not one archscale reads ({', '.join(FAMILIES)}); "
                        "its layout (MLP, biases, norms) could differ from every count here, so it is refused "
                        "rather than read as a Llama")
    return model_type, FAMILIES[model_type]


def architecture_from_config(config: dict, name: str = "", source: str = "config.json") -> Architecture:
    """Read the shape from an HF-style config dict (the decoder's keys): every field read right or refused.

    Every field read is checked here and a bad one is refused naming ``source`` and the field, because
    a silent fallback computes the wrong model: ``num_key_value_heads: 0`` is not MHA, ``head_dim: 0``
    is not hidden/heads, and the string ``"false"`` is not false. Only an absent or null key takes its default
    (the family's, as transformers' config class has it).
    """
    model_type, family = family_of(config, source)
    _refuse_unknown_routing(config, model_type, family, source)
    d_model = _config_count(config, "hidden_size", source)
    n_heads = _config_count(config, "num_attention_heads", source)
    n_layers = _config_count(config, "num_hidden_layers", source)
    if config.get("num_key_value_heads") is None and not family.mha_default:
        raise UserError(f"{source}: missing key 'num_key_value_heads' (transformers' {model_type} default is not "
                        "one KV head per query head; give it)")
    n_kv_heads = _config_count(config, "num_key_value_heads", source, default=n_heads)
    if n_heads % n_kv_heads:
        raise UserError(f"{source}: num_key_value_heads {n_kv_heads} does not divide num_attention_heads {n_heads} "
                        "(each KV head serves a whole group of query heads)")
    latent = _read_latent(config, family, source)
    d_head = latent.pop("d_head") if latent else _read_head_dim(config, family, d_model, n_heads, source)
    if latent:
        n_kv_heads = n_heads  # MLA: one key/value head per query head, whatever num_key_value_heads says
    _check_training_scalars(config, source)
    experts = _read_experts(config, family, n_layers, source)
    d_ff = _config_count(config, "intermediate_size", source)
    if experts.get("n_experts", 0) > 1 and not experts.get("first_dense_layers"):
        d_ff = experts["expert_d_ff"]  # no dense layer: intermediate_size is unused (or is the expert width)
    return Architecture(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_head, d_ff=d_ff,
        vocab_size=_config_count(config, "vocab_size", source, default=128256 if "model_type" not in config else None),
        tie_embeddings=_read_tie(config, family, source), name=name,
        **experts, **latent, **_read_window(config, model_type, family, n_layers, source),
    )


def _refuse_unknown_routing(config: dict, model_type: str, family: Family, source: str) -> None:
    """An expert/routing key archscale does not read for this family, set to something, is refused by name."""
    reads = _EXPERT_KEYS.get(family.experts or "", set())
    for key, value in config.items():
        if value in (None, False, 0, [], {}):
            continue
        if key in _STRUCTURAL_EXPERT_KEYS and key not in reads:
            raise UserError(f"{source}: {key} {value!r}: model_type {model_type} has no such expert setting "
                            "(archscale will not guess how its layers use it)")
        if (_ROUTING_LOOKING.search(key) and key not in _STRUCTURAL_EXPERT_KEYS
                and (key not in _ROUTING_BEHAVIOUR_KEYS or not family.experts)):
            raise UserError(f"{source}: unknown routing field {key!r} for model_type {model_type}: archscale does "
                            "not know how it changes the experts, so it refuses the config rather than guess")


def _read_head_dim(config: dict, family: Family, d_model: int, n_heads: int, source: str) -> int:
    """``head_dim``, else the family's default (Qwen3 128, Gemma 256), else hidden / heads."""
    if config.get("head_dim") is None and family.head_dim is None and d_model < n_heads:
        raise UserError(f"{source}: no head_dim, and hidden_size {d_model} / num_attention_heads {n_heads} is below 1; "
                        "give head_dim")
    default = family.head_dim or d_model // n_heads
    d_head = _config_count(config, "head_dim", source, default=default)
    require_even_head_dim(d_head, f"{source}: head_dim" if config.get("head_dim") is not None
                          else f"{source}: no head_dim is given, and hidden_size / num_attention_heads =")
    return d_head


def _read_tie(config: dict, family: Family, source: str) -> bool:
    """``tie_word_embeddings``, else the family's default (transformers': true for Gemma, false for the others)."""
    tie = config.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise UserError(f"{source}: tie_word_embeddings must be true or false, got {tie!r}")
    return family.tie_default if tie is None else tie


def _check_training_scalars(config: dict, source: str) -> None:
    """What the training loop reads besides the shape: positive numbers when given."""
    for key in ("rope_theta", "rms_norm_eps"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise UserError(f"{source}: {key} must be a positive number, got {value!r}")
    if config.get("max_position_embeddings") is not None:
        _config_count(config, "max_position_embeddings", source)


def _read_experts(config: dict, family: Family, n_layers: int, source: str) -> dict:
    """The MoE fields of :class:`Architecture` in the family's spelling (empty for a dense family)."""
    kind = family.experts
    if kind is None:
        return {}
    if kind == "deepseek":
        return _read_deepseek_experts(config, source)
    experts_key = "num_local_experts" if kind == "mixtral" else "num_experts"
    fields = _routed(config, experts_key, source)
    if kind in ("mixtral", "olmoe"):
        return {**fields, "expert_d_ff": _config_count(config, "intermediate_size", source)}
    fields["expert_d_ff"] = _config_count(config, "moe_intermediate_size", source)
    if _config_count(config, "decoder_sparse_step", source, default=1) != 1:
        raise UserError(f"{source}: decoder_sparse_step {config['decoder_sparse_step']}: an MoE layer every "
                        "few layers is not modelled (only dense layers first, via mlp_only_layers, are)")
    fields["first_dense_layers"] = _dense_prefix(config.get("mlp_only_layers"), n_layers, source)
    if kind == "qwen2_moe":  # one always-on expert of its own width, behind a sigmoid gate
        fields.update(n_shared_experts=1, shared_expert_gate=True,
                      shared_expert_d_ff=_config_count(config, "shared_expert_intermediate_size", source))
    return fields


def _routed(config: dict, experts_key: str, source: str) -> dict:
    """E (under the family's ``experts_key``) and k (``num_experts_per_tok``), with k <= E."""
    n_experts = _config_count(config, experts_key, source)
    top_k = _config_count(config, "num_experts_per_tok", source)
    if n_experts < 2:
        raise UserError(f"{source}: {experts_key} {n_experts}: a Mixture of Experts needs at least 2 experts (a "
                        "single expert behind a router is neither a dense layer nor a modelled MoE one)")
    if top_k > n_experts:
        raise UserError(f"{source}: num_experts_per_tok {top_k} exceeds {experts_key} {n_experts} (each token picks "
                        "k of the E experts, so k <= E)")
    return {"n_experts": n_experts, "experts_per_token": top_k}


def _dense_prefix(layers: Any, n_layers: int, source: str) -> int:
    """Qwen-MoE's ``mlp_only_layers`` as a count of leading dense layers; any other set of layers is refused."""
    if layers is None:
        return 0
    if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise UserError(f"{source}: mlp_only_layers must be a list of layer indices, got {layers!r}")
    if sorted(set(layers)) != list(range(len(layers))) or len(layers) >= n_layers:
        raise UserError(f"{source}: mlp_only_layers {layers}: only dense layers before the first MoE layer "
                        f"(0, 1, ..., m-1 with m < {n_layers}) are modelled")
    return len(layers)


def _read_deepseek_experts(config: dict, source: str) -> dict:
    """DeepSeek-V2: routed experts, shared experts of the same width, dense layers first."""
    if config.get("n_routed_experts") is None:
        return {}  # every layer dense, as DeepSeek's own code builds it
    if _config_count(config, "moe_layer_freq", source, default=1) != 1:
        raise UserError(f"{source}: moe_layer_freq {config['moe_layer_freq']}: an MoE layer every few layers is not "
                        "modelled (only dense layers first, via first_k_dense_replace, are)")
    method = config.get("topk_method")
    if method not in _DEEPSEEK_TOPK:
        raise UserError(f"{source}: topk_method {method!r} is not modelled (known: greedy, group_limited_greedy); "
                        "noaux_tc adds a per-expert bias DeepSeek-V2 does not have")
    width = _config_count(config, "moe_intermediate_size", source)
    shared = _config_count(config, "n_shared_experts", source, default=0, minimum=0)
    return {**_routed(config, "n_routed_experts", source), "expert_d_ff": width,
            "n_shared_experts": shared, "shared_expert_d_ff": width if shared else 0,
            "first_dense_layers": _config_count(config, "first_k_dense_replace", source, default=0, minimum=0)}


def _read_latent(config: dict, family: Family, source: str) -> dict:
    """DeepSeek's latent attention (its ``d_head`` is nope + rope); its keys on any other family are refused."""
    if not family.latent:
        for key in _LATENT_KEYS:
            if config.get(key):
                raise UserError(f"{source}: {key} {config[key]!r}: latent attention is read only for deepseek_v2 "
                                f"configs, not model_type {config.get('model_type', LLAMA)}")
        return {}
    rope = _config_count(config, "qk_rope_head_dim", source)
    d_head = _config_count(config, "qk_nope_head_dim", source) + rope
    require_even_head_dim(rope, f"{source}: qk_rope_head_dim")
    return {"d_head": d_head, "kv_lora_rank": _config_count(config, "kv_lora_rank", source),
            "q_lora_rank": _config_count(config, "q_lora_rank", source, default=0, minimum=0),
            "qk_rope_head_dim": rope, "v_head_dim": _config_count(config, "v_head_dim", source)}


def _read_window(config: dict, model_type: str, family: Family, n_layers: int, source: str) -> dict:
    """``sliding_window`` and how many layers use it, in the family's spelling (see :class:`Family`)."""
    kind = family.window
    if kind is None:
        _refuse_window_keys(config, model_type, source)
        return {}
    if kind in ("refused", "qwen") and not config.get("use_sliding_window"):
        return {}  # transformers drops the window unless use_sliding_window is true
    if kind == "refused":
        raise UserError(f"{source}: use_sliding_window true: model_type {model_type}'s sliding layers are not "
                        "modelled (its layer pattern differs between transformers versions)")
    window = config.get("sliding_window", None if kind == "all" else 4096)  # transformers' defaults; null: none
    if window is None:
        return {}
    window = _config_count({"sliding_window": window}, "sliding_window", source)
    sliding = _sliding_layers(config, kind, n_layers, source)
    return {"sliding_window": window, "n_sliding_layers": sliding} if sliding else {}


def _refuse_window_keys(config: dict, model_type: str, source: str) -> None:
    """A window on a family without one (Llama, OLMo, DeepSeek, Gemma 1) is refused: transformers would ignore it,
    and a user who wrote it meant a window."""
    for key in ("sliding_window", "use_sliding_window", "sliding_window_pattern"):
        if config.get(key):
            raise UserError(f"{source}: {key} {config[key]!r}: model_type {model_type} has no sliding-window "
                            "attention; remove it, or give the model_type whose layers use it")
    types = config.get("layer_types")
    if types is not None and (not isinstance(types, list) or set(types) - {"full_attention"}):
        raise UserError(f"{source}: layer_types: model_type {model_type} has no sliding-window attention; remove it")


def _sliding_layers(config: dict, kind: str, n_layers: int, source: str) -> int:
    """How many layers use the window: ``layer_types`` when given, else the family's pattern."""
    types = config.get("layer_types")
    if types is not None and kind not in ("all", "all_4096"):
        allowed = {"full_attention", "sliding_attention"}
        if not isinstance(types, list) or len(types) != n_layers or not set(types) <= allowed:
            raise UserError(f"{source}: layer_types must list 'full_attention' or 'sliding_attention' for each of the "
                            f"{n_layers} layers")
        return types.count("sliding_attention")
    if types is not None:
        raise UserError(f"{source}: layer_types: mistral and mixtral configs slide every layer; per-layer types "
                        "are not read for them")
    if kind in ("all", "all_4096"):
        return n_layers
    if kind == "qwen":  # layers from max_window_layers on
        return max(0, n_layers - _config_count(config, "max_window_layers", source, default=28, minimum=0))
    if kind == "gemma2":  # every other layer, from layer 0
        return (n_layers + 1) // 2
    pattern = _config_count(config, "sliding_window_pattern", source, default=6)  # gemma3: every pattern-th is full
    return n_layers - n_layers // pattern


def _config_count(config: dict, key: str, source: str, default: int | None = None, minimum: int = 1) -> int:
    """A count from an HF config: a whole number (``2048`` or ``2048.0``) of at least ``minimum``, never truncated.

    An absent or null key takes ``default``; without one it is refused as missing.
    """
    value = config.get(key)
    if value is None:
        if default is None:
            raise UserError(f"{source}: missing key {key!r} (an HF-style config.json needs hidden_size, "
                            "intermediate_size, num_hidden_layers, num_attention_heads, and its model_type's keys)")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise UserError(f"{source}: {key} must be a whole number, got {value!r}")
    if value < minimum:
        what = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise UserError(f"{source}: {key} must be {what}, got {int(value)}")
    return int(value)


# ---- what the bundled model trains -----------------------------------------------------------------------------
def require_bundled_model(config: dict, arch: Architecture, source: str) -> None:
    """Refuse, naming the field, a config archscale's bundled model cannot be (``train`` and ``export``).

    The bundled model is a Llama block: RMSNorm, plain RoPE at the config's ``rope_theta``, a SwiGLU (silu) MLP or,
    Mixtral style, ``k`` of ``E`` routed SwiGLU experts, no biases, full attention. Training anything else would
    train another model than the config names, and export would write a checkpoint that loads with missing or
    random weights.
    """
    model_type, family = family_of(config, source)
    reason = (_structure_refusal(config, arch, family) or _forward_refusal(config)
              or (f"model_type {model_type}: {family.differs}" if family.differs else None))
    if reason:
        raise UserError(f"{source}: {reason}; the bundled model is a Llama without it (RMSNorm, plain RoPE, "
                        "silu SwiGLU or Mixtral-style routed experts, no biases, full attention), so train and export "
                        "refuse the config (arch reads it)")
    for key in ("rope_theta", "rms_norm_eps"):  # the bundled model's defaults (500000, 1e-5) are not transformers'
        if config.get(key) is None:
            raise UserError(f"{source}: no {key}: give it, since the bundled model's default and transformers' "
                            f"{model_type} default differ and the exported model would not be the trained one")


def bundled_model_refusal(arch: Architecture) -> str | None:
    """What of ``arch`` the bundled model cannot represent, in the Architecture's field names; None if nothing.

    One rule for the model itself (:class:`~archscale.model.transformer.Transformer` refuses to be built as another
    shape) and for ``train``/``export`` (:func:`require_bundled_model`, which names the config's keys instead).
    Routed experts are represented; shared experts and dense layers before the MoE layers are not, because no
    config layout archscale exports holds them without another forward pass (Qwen2-MoE's q/k/v biases and
    unnormalised top-k weights, Qwen3-MoE's q/k norms, DeepSeek's latent attention).
    """
    if arch.n_shared_experts:
        return f"n_shared_experts {arch.n_shared_experts}: shared experts"
    if arch.first_dense_layers:
        return f"first_dense_layers {arch.first_dense_layers}: dense layers before the Mixture-of-Experts layers"
    if arch.kv_lora_rank:
        return f"kv_lora_rank {arch.kv_lora_rank}: latent attention"
    if arch.n_sliding_layers:
        return (f"sliding_window {arch.sliding_window} on {arch.n_sliding_layers} of {arch.n_layers} layers: "
                "sliding-window attention")
    return None


_CONFIG_SPELLING = {  # Architecture field -> the key a family's config.json spells it with
    "qwen2_moe": {"n_shared_experts": "shared_expert_intermediate_size", "first_dense_layers": "mlp_only_layers"},
    "qwen3_moe": {"first_dense_layers": "mlp_only_layers"},
    "deepseek": {"first_dense_layers": "first_k_dense_replace"},
}


def _structure_refusal(config: dict, arch: Architecture, family: Family) -> str | None:
    """Shared experts, dense layers first, latent attention, a sliding window (what the Architecture itself
    carries), or a router setting the loop does not apply, in the config's own key names."""
    reason = bundled_model_refusal(arch)
    if reason:
        key = _CONFIG_SPELLING.get(family.experts or "", {}).get(reason.partition(" ")[0])
        return f"{key} {config.get(key)!r}: {reason.partition(': ')[2]}" if key else reason
    jitter = config.get("router_jitter_noise")
    if arch.is_moe and jitter:
        return f"router_jitter_noise {jitter!r}: router input noise while training (the loop adds none)"
    return None


def _forward_refusal(config: dict) -> str | None:
    """RoPE scaling, biases, another activation: fields that change the forward pass but no count."""
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type", "default"))
            if kind != "default":
                return f"{key} ({kind}): RoPE scaling, which changes attention with position"
        elif value is not None:
            return f"{key} {value!r}: RoPE scaling, which changes attention with position"
    for key in ("attention_bias", "mlp_bias", "qkv_bias"):
        if config.get(key):
            return f"{key} {config[key]!r}: biases"
    for key in ("hidden_act", "hidden_activation"):
        value = config.get(key)
        if value is not None and value not in _SILU:
            return f"{key} {value!r}: an MLP activation other than silu"
    return None


# ---- writing ---------------------------------------------------------------------------------------------------
def write_hf_config(arch: Architecture, max_position_embeddings: int = 8192, rope_theta: float = 500000.0) -> dict:
    """The config.json of a shape: Llama for a dense one; else the layout that holds it (Mixtral, Qwen2-MoE,
    Qwen3-MoE, DeepSeek-V2, Mistral, Qwen2). Reading it back gives the same Architecture; a shape no layout holds
    is refused naming why."""
    base = {"hidden_size": arch.d_model, "intermediate_size": arch.d_ff, "num_hidden_layers": arch.n_layers,
            "num_attention_heads": arch.n_heads, "num_key_value_heads": arch.n_kv_heads, "head_dim": arch.d_head,
            "vocab_size": arch.vocab_size, "tie_word_embeddings": arch.tie_embeddings,
            "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-5, "rope_theta": rope_theta,
            "hidden_act": "silu"}
    if arch.is_dense_llama:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **base, "attention_bias": False,
                "mlp_bias": False, "torch_dtype": "bfloat16"}
    label = f"architecture {arch.name or '?'}"
    if arch.kv_lora_rank:
        layout = _deepseek_layout(arch, label)
    elif arch.is_moe:
        layout = _moe_layout(arch, label)
    else:
        layout = _window_layout(arch)
    header = {"architectures": layout.pop("architectures"), "model_type": layout.pop("model_type")}
    return {**header, **base, **layout, "torch_dtype": "bfloat16"}


def _window_layout(arch: Architecture) -> dict:
    """A dense shape with a sliding window: Mistral when every layer slides, else Qwen2's ``max_window_layers``."""
    if arch.n_sliding_layers == arch.n_layers:
        return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": arch.sliding_window}
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": True,
            "sliding_window": arch.sliding_window, "max_window_layers": arch.n_layers - arch.n_sliding_layers}


def _moe_layout(arch: Architecture, label: str) -> dict:
    """Mixtral (routed experts only), Qwen2-MoE (one gated shared expert) or Qwen3-MoE (dense layers first)."""
    if arch.n_sliding_layers and (arch.n_shared_experts or arch.first_dense_layers
                                  or arch.n_sliding_layers != arch.n_layers):
        raise UserError(f"{label}: only a Mixtral layout (every layer sliding) holds experts with a sliding window")
    experts = {"num_experts": arch.n_experts, "num_experts_per_tok": arch.experts_per_token,
               "moe_intermediate_size": arch.expert_d_ff, "decoder_sparse_step": 1,
               "mlp_only_layers": list(range(arch.first_dense_layers))}
    if not arch.n_shared_experts and not arch.first_dense_layers:
        return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "intermediate_size": arch.expert_d_ff,
                "num_local_experts": arch.n_experts, "num_experts_per_tok": arch.experts_per_token,
                "sliding_window": arch.sliding_window or None}
    if not arch.n_shared_experts:
        return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", **experts}
    if arch.n_shared_experts == 1 and arch.shared_expert_gate:
        return {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", **experts,
                "shared_expert_intermediate_size": arch.shared_expert_d_ff}
    raise UserError(f"{label}: {arch.n_shared_experts} shared experts without a gate fit no config layout archscale "
                    "writes without latent attention (Qwen2-MoE has one gated shared expert, DeepSeek-V2 has MLA)")


def _deepseek_layout(arch: Architecture, label: str) -> dict:
    """DeepSeek-V2: latent attention, and experts whose shared ones have the routed width and no gate."""
    if arch.n_sliding_layers:
        raise UserError(f"{label}: no config layout holds latent attention with a sliding window")
    if arch.n_shared_experts and (arch.shared_expert_d_ff != arch.expert_d_ff or arch.shared_expert_gate):
        raise UserError(f"{label}: DeepSeek-V2's shared experts have the routed experts' width and no gate; "
                        "this shape's do not fit a config layout archscale writes")
    layout = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
              "kv_lora_rank": arch.kv_lora_rank, "q_lora_rank": arch.q_lora_rank or None,
              "qk_nope_head_dim": arch.d_head - arch.qk_rope_head_dim, "qk_rope_head_dim": arch.qk_rope_head_dim,
              "v_head_dim": arch.v_head_dim, "n_routed_experts": None}
    if arch.is_moe:
        layout.update(n_routed_experts=arch.n_experts, num_experts_per_tok=arch.experts_per_token,
                      moe_intermediate_size=arch.expert_d_ff, n_shared_experts=arch.n_shared_experts or None,
                      first_k_dense_replace=arch.first_dense_layers, moe_layer_freq=1, topk_method="greedy")
    return layout


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
