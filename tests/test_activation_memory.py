"""The activation memory the training preflight and the torch backend count for an MLP, against what autograd
really keeps: the bytes of the tensors a forward pass saves for its backward, measured on the bundled model.

The preflight promises a lower bound (it leaves out autograd's smaller temporaries), so the estimate must not exceed
what is saved, and must not be far below it either: an MoE token goes through k experts, and an estimate that
counted one expert's width let a top-8 run past the preflight with an eighth of its MLP activations counted.
"""

from __future__ import annotations

import pytest
import torch

from archscale.model.memory import mlp_activation_bytes
from archscale.model.transformer import MLP, MoE
from archscale.shapes.architecture import Architecture
from archscale.train.preflight import training_memory

TOKENS = 1024
SHAPES = {
    "dense": Architecture(2, 64, 4, 4, 16, 192, vocab_size=256),
    "top-1 of 4": Architecture(2, 64, 4, 4, 16, 96, vocab_size=256, n_experts=4, experts_per_token=1, expert_d_ff=96),
    "top-4 of 8": Architecture(2, 64, 4, 4, 16, 96, vocab_size=256, n_experts=8, experts_per_token=4, expert_d_ff=96),
    "top-8 of 32, narrow": Architecture(2, 64, 4, 4, 16, 32, vocab_size=256, n_experts=32, experts_per_token=8,
                                        expert_d_ff=32),
}


def saved_bytes_per_token(arch: Architecture) -> float:
    """Bytes of the distinct storages an MLP (dense or MoE) forward saves for backward, per token, in float32;
    the module's own weights left out."""
    torch.manual_seed(0)
    module = MoE(arch) if arch.is_moe else MLP(arch)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    weights = {parameter.untyped_storage().data_ptr() for parameter in module.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(TOKENS, arch.d_model, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        module(x).sum().backward()
    return sum(storages.values()) / TOKENS


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_mlp_activation_estimate_is_a_close_lower_bound_of_what_autograd_keeps(name):
    arch = SHAPES[name]
    estimate = mlp_activation_bytes(arch, element=4)
    measured = saved_bytes_per_token(arch)
    assert 0.6 * measured <= estimate <= measured, (estimate, measured)


def test_the_preflight_counts_every_expert_a_token_passes_through():
    """A top-4 model of 96-wide experts keeps at least what a dense model 4 x 96 wide keeps (the same MLP work per
    token), and more than a top-1 model of the same experts."""
    top1, top4 = SHAPES["top-1 of 4"], SHAPES["top-4 of 8"]
    dense = Architecture(2, 64, 4, 4, 16, 4 * 96, vocab_size=256)
    one, four, wide = (training_memory(arch, 8, 256, autocast_bf16=False).activations for arch in (top1, top4, dense))
    assert four >= wide > one
