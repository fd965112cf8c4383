"""Training hyper-parameters (``train.json``) and the config-directory contract.

A config directory, as ``archscale search --emit`` writes it, holds
``config.json`` (HF ``LlamaConfig``-style, from
:func:`archscale.shapes.hf_config.write_hf_config`) and optionally ``train.json`` (a
:class:`TrainConfig`). Without ``train.json`` the defaults follow the
dissertation's Table 6.1 for the nearest model size (:meth:`TrainConfig.for_model_size`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archscale.shapes.architecture import Architecture
from archscale.shapes.hf_config import read_hf_config, require_bundled_model
from archscale.io.errors import UserError
from archscale.io.files import read_json, write_json, write_text
from archscale.shapes.hf_config import write_hf_config

CONFIG_FILE = "config.json"
TRAIN_FILE = "train.json"

# Dissertation Table 6.1: non-embedding size -> (batch in sequences of 2048, max LR).
# Min LR 0.1x max, AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, cosine, warmup 500.
TABLE_6_1: tuple[tuple[float, int, float], ...] = (
    (80e6, 256, 1.5e-3),
    (145e6, 256, 1.0e-3),
    (297e6, 512, 8.0e-4),
    (1e9, 512, 6.0e-4),
    (3e9, 512, 6.0e-4),
)
TINY_LIMIT = 20e6
TOKENS_PER_PARAM = 100  # "all trained on 100 N tokens"
ROUTER_AUX_LOSS_COEF = 0.01
"""The load-balancing loss's weight for an MoE run whose config.json gives no ``router_aux_loss_coef``: Switch
Transformer's 1e-2 (OLMoE trains with it too). transformers' config classes default to 1e-3, so the run's
config.json, and its export, always carry the value trained with."""


@dataclass
class TrainConfig:
    """Everything about a training run that is not the architecture.

    ``tokens`` is the budget; the run takes ``ceil(tokens / (batch_size *
    seq_len))`` optimizer steps. ``batch_size`` counts sequences per optimizer
    step across all ranks; ``micro_batch_size`` sequences go through the model
    at once (gradient accumulation makes up the rest). ``warmup_steps`` is
    capped at a tenth of the run so that short runs still decay.
    ``schedule`` is ``cosine`` (warmup, cosine to ``lr_min_ratio * lr_max``)
    or ``wsd`` (warmup, constant, linear decay over the last
    ``wsd_decay_fraction`` of steps). ``eval_every``, ``checkpoint_every`` and
    ``log_every`` are in optimizer steps (0: only at the end). ``dtype`` is
    ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``float32`` or
    ``bfloat16``; ``compile`` ``null`` means "on CUDA only".
    """

    tokens: int = 100_000_000
    seq_len: int = 2048
    batch_size: int = 256
    micro_batch_size: int = 16
    lr_max: float = 1.5e-3
    lr_min_ratio: float = 0.1
    warmup_steps: int = 500
    schedule: str = "cosine"
    wsd_decay_fraction: float = 0.2
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    z_loss: float = 0.0
    eval_every: int = 250
    eval_tokens: int = 1_048_576
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0
    dtype: str = "auto"
    compile: bool | None = None

    # ---- defaults by size -----------------------------------------------------
    @classmethod
    def for_model_size(cls, n_non_embed: int, tokens: int | None = None) -> "TrainConfig":
        """Defaults for a model of ``n_non_embed`` parameters, trained on ``tokens`` (default 100 N).

        From 20M up: the Table 6.1 row nearest in log size (80M, 145M, 297M,
        1B, 3B), sequences of 2048, warmup 500. Below 20M (CPU-sized models,
        not in the paper): sequences of 256, 32 per step (8k tokens), micro
        batch 16, max LR 3e-3 (small models take larger rates), warmup 100,
        evaluation every 100 steps on 64k tokens, checkpoints every 200.
        """
        budget = int(tokens) if tokens is not None else int(TOKENS_PER_PARAM * n_non_embed)
        if n_non_embed < TINY_LIMIT:
            return cls(tokens=budget, seq_len=256, batch_size=32, micro_batch_size=16, lr_max=3e-3, warmup_steps=100,
                       eval_every=100, eval_tokens=65_536, checkpoint_every=200)
        _, batch, lr = min(TABLE_6_1, key=lambda row: abs(math.log(row[0]) - math.log(n_non_embed)))
        return cls(tokens=budget, seq_len=2048, batch_size=batch, micro_batch_size=8 if n_non_embed < 5e8 else 4,
                   lr_max=lr, warmup_steps=500)

    # ---- derived ------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Optimizer steps needed to cover the token budget (at least one)."""
        return max(1, math.ceil(self.tokens / self.tokens_per_step))

    # ---- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    def to_json(self) -> str:
        """Canonical text (sorted keys): what is saved and what the config hash covers."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, source: str = TRAIN_FILE) -> "TrainConfig":
        """Build and validate; unknown keys and bad values raise one-line errors naming ``source``."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object of training settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
        config = cls()
        for key, value in data.items():
            setattr(config, key, _coerce(key, value, source))
        config.validate(source)
        return config

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_json(path), str(path))

    def replace(self, source: str = "overrides", **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (``None`` values are ignored)."""
        changes = {key: _coerce(key, value, source) for key, value in changes.items() if value is not None}
        config = dataclasses.replace(self, **changes)
        config.validate(source)
        return config

    def validate(self, source: str = TRAIN_FILE) -> None:
        """Check ranges and consistency; raise :class:`UserError` naming ``source`` and the key."""
        checks: list[tuple[str, bool, str]] = [
            ("tokens", self.tokens > 0, "must be > 0"),
            ("seq_len", self.seq_len > 0, "must be > 0"),
            ("batch_size", self.batch_size > 0, "must be > 0"),
            ("micro_batch_size", self.micro_batch_size > 0, "must be > 0"),
            ("micro_batch_size", self.micro_batch_size <= self.batch_size, f"must be <= batch_size ({self.batch_size})"),
            ("lr_max", self.lr_max > 0, "must be > 0"),
            ("lr_min_ratio", 0 <= self.lr_min_ratio <= 1, "must be in [0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("schedule", self.schedule in ("cosine", "wsd"), "must be 'cosine' or 'wsd'"),
            ("wsd_decay_fraction", 0 < self.wsd_decay_fraction <= 1, "must be in (0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "must be two numbers in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0 (0 disables clipping)"),
            ("z_loss", self.z_loss >= 0, "must be >= 0"),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("eval_tokens", self.eval_tokens > 0, "must be > 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0"),
            ("log_every", self.log_every > 0, "must be > 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("dtype", self.dtype in ("auto", "float32", "bfloat16"), "must be 'auto', 'float32' or 'bfloat16'"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise UserError(f"{source}: {key} {message}, got {getattr(self, key)!r}")
        if self.batch_size % self.micro_batch_size:
            raise UserError(f"{source}: micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")


_INT_KEYS = {"tokens", "seq_len", "batch_size", "micro_batch_size", "warmup_steps", "eval_every", "eval_tokens",
             "checkpoint_every", "log_every", "seed"}
_FLOAT_KEYS = {"lr_max", "lr_min_ratio", "wsd_decay_fraction", "weight_decay", "grad_clip", "z_loss"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Type-check one value; integers may be written as ``2e6`` but must be whole."""
    def bad(expected: str) -> UserError:
        return UserError(f"{source}: {key} must be {expected}, got {value!r}")

    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise bad("a whole number")
        return int(value)
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a number")
        return float(value)
    if key == "betas":
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in value):
            raise bad("a list of two numbers")
        return (float(value[0]), float(value[1]))
    if key in ("schedule", "dtype"):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if key == "compile":
        if value is not None and not isinstance(value, bool):
            raise bad("true, false or null")
        return value
    raise UserError(f"{source}: unknown key {key!r}")


# ---- config directories -----------------------------------------------------------
def load_model_config(config_dir: str | Path) -> tuple[Architecture, dict[str, Any]]:
    """Read and validate ``config_dir/config.json``: the architecture and its decoder's HF dict (``read_hf_config``,
    the reader arch and bench use: one rule), refusing what the bundled model cannot train
    (:func:`~archscale.shapes.hf_config.require_bundled_model`: shared experts, latent attention, a sliding window,
    RoPE scaling, biases, another activation, another family's norms)."""
    path = Path(config_dir) / CONFIG_FILE
    if not Path(config_dir).is_dir():
        raise UserError(f"{config_dir}: not a directory (expected a config directory with {CONFIG_FILE})")
    if not path.exists():
        raise UserError(f"{path}: no such file (a config directory needs {CONFIG_FILE})")
    arch, hf_config = read_hf_config(path, name=Path(config_dir).resolve().name)
    require_bundled_model(hf_config, arch, str(path))
    return arch, hf_config


def with_router_aux_loss_coef(hf_config: dict[str, Any], arch: Architecture, source: str) -> dict[str, Any]:
    """An MoE run's config with ``router_aux_loss_coef`` (the load-balancing loss's weight) set and checked.

    The weight lives in config.json, where Mixtral's config keeps it, so that it is part of the recipe hash and an
    export tells transformers to train on with the same weight. Absent, it is :data:`ROUTER_AUX_LOSS_COEF`, written
    in so that the run's config.json says what was trained. A dense config is returned as it is.
    """
    if not arch.is_moe:
        return hf_config
    value = hf_config.get("router_aux_loss_coef")
    if value is None:
        return {**hf_config, "router_aux_loss_coef": ROUTER_AUX_LOSS_COEF}
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{source}: router_aux_loss_coef must be a number >= 0 (the load-balancing loss's weight; "
                        f"0 turns it off), got {value!r}")
    return hf_config


def load_train_config(config_dir: str | Path, arch: Architecture) -> TrainConfig:
    """``config_dir/train.json`` if present, else the defaults for the model's size."""
    path = Path(config_dir) / TRAIN_FILE
    if path.exists():
        return TrainConfig.load(path)
    return TrainConfig.for_model_size(arch.n_params_non_embedding)


def write_config_dir(path: str | Path, arch: Architecture, train_config: TrainConfig | None = None) -> Path:
    """Write a config directory (``config.json``, and ``train.json`` when given); for tests and scripts."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / CONFIG_FILE, write_hf_config(arch))
    if train_config is not None:
        train_config.validate()
        train_config.save(path / TRAIN_FILE)
    return path


def canonical_model_json(hf_config: dict[str, Any]) -> str:
    """The text a run directory stores for ``config.json`` (sorted keys), so the hash is stable."""
    return json.dumps(hf_config, indent=2, sort_keys=True) + "\n"


def recipe_hash(hf_config: dict[str, Any], train_config: TrainConfig) -> str:
    """First 12 hex digits of sha256(config.json + train.json) as a run directory stores them.

    It identifies a run's full recipe (shape and every training setting,
    overrides included), so a sweep can tell which recipes already have a row.
    Not the bench store's ``config_hash``, which hashes the shape alone
    (:func:`archscale.bench.records.config_hash`).
    """
    text = canonical_model_json(hf_config) + train_config.to_json()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


__all__ = [
    "TrainConfig", "load_model_config", "load_train_config", "write_config_dir", "recipe_hash",
    "canonical_model_json", "with_router_aux_loss_coef", "CONFIG_FILE", "TRAIN_FILE", "TABLE_6_1",
    "ROUTER_AUX_LOSS_COEF",
]
