"""What a training run checks before step one: will the model and its optimizer fit in memory.

Without this check a config too large for the machine allocates until it
crashes or meets the OOM killer, possibly after minutes. The estimate reuses
the bundled model's memory arithmetic (:mod:`archscale.model.memory`, as the torch
bench backend does, and :mod:`archscale.io.machine` for the free memory of the device: the bytes of activations one token leaves per
layer, the allocator slack) and adds what training holds on top: fp32
weights, their gradients and AdamW's two moments (16 bytes per parameter),
every layer's activations for one micro batch (kept for the backward pass),
and the fp32 logits and their gradient. It leaves out autograd's smaller
temporaries, so it is a lower bound: a refusal is certain, a pass is likely.
"""

from __future__ import annotations

from dataclasses import dataclass

from archscale.shapes.architecture import Architecture
from archscale.io.machine import available_bytes
from archscale.model.memory import SLACK_BYTES, prefill_bytes_per_token
from archscale.io.errors import UserError

STATE_BYTES_PER_PARAM = 4 + 4 + 8
"""fp32 weights, fp32 gradients, AdamW's first and second moments."""


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one rank needs, by part."""

    states: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.states + self.activations + self.logits + int(SLACK_BYTES)


def training_memory(arch: Architecture, micro_batch: int, seq_len: int, autocast_bf16: bool,
                    shards: int = 1) -> TrainingMemory:
    """Lower-bound bytes for training ``arch`` on one rank (``shards`` > 1: FSDP splits the states)."""
    element = 2 if autocast_bf16 else 4
    states = arch.n_params_total * STATE_BYTES_PER_PARAM // max(1, shards)
    per_token = arch.n_layers * prefill_bytes_per_token(arch, seq_len, element, masked=False, over_layers="mean")
    activations = micro_batch * seq_len * per_token
    logits = 2 * micro_batch * seq_len * arch.vocab_size * 4
    return TrainingMemory(int(states), int(activations), int(logits))


def check_training_memory(arch: Architecture, micro_batch: int, seq_len: int, device, autocast_bf16: bool,
                          shards: int = 1, label: str = "") -> None:
    """Refuse, before the model is built, a run whose estimate exceeds the device's free memory."""
    available = available_bytes(device)
    if available is None:
        return
    need = training_memory(arch, micro_batch, seq_len, autocast_bf16, shards)
    if need.total <= available:
        return
    where = "this machine" if device.type == "cpu" else str(device)
    raise UserError(
        f"{label or arch.name or 'model'}: training needs at least {need.total / 1e9:.1f} GB ({need.states / 1e9:.1f} GB "
        f"for weights, gradients and AdamW moments, {need.activations / 1e9:.1f} GB of activations at micro_batch_size "
        f"{micro_batch} x seq_len {seq_len}) but {where} has {available / 1e9:.1f} GB free; nothing was written: "
        "use a smaller model, micro_batch_size or seq_len")


def check_recipes_fit(specs, device: str = "auto") -> None:
    """A sweep's check: every recipe's estimate against this machine, before the first one trains."""
    import torch

    target = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    for spec in specs:
        cfg = spec.train_config
        check_training_memory(spec.arch, cfg.micro_batch_size, cfg.seq_len, target,
                              autocast_bf16=target.type == "cuda" and cfg.dtype != "float32", label=spec.name)
