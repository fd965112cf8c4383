"""The LLaMA-style model: exact parameter counts, KV-cache decoding, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archscale.shapes.architecture import Architecture
from archscale.io.errors import UserError
from archscale.model.transformer import Transformer

SHAPES = [
    Architecture(4, 128, 4, 2, 32, 384, vocab_size=256),  # the ~1M CPU model
    Architecture(2, 160, 6, 2, 32, 256, vocab_size=300),  # d_model % n_heads != 0
    Architecture(2, 160, 6, 2, 32, 256, vocab_size=300, tie_embeddings=True),
    Architecture(3, 96, 3, 3, 24, 200, vocab_size=64),  # plain multi-head attention, d_q != d_model
]


@pytest.mark.parametrize("arch", SHAPES, ids=lambda a: f"{a.d_model}x{a.n_heads}/{a.n_kv_heads}{'-tied' if a.tie_embeddings else ''}")
def test_parameter_count_equals_architecture(arch):
    model = Transformer(arch)
    assert sum(p.numel() for p in model.parameters()) == arch.n_params_total
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("embed_tokens", "lm_head")))
    assert non_embedding == arch.n_params_non_embedding == model.n_params(non_embedding=True)


def test_tied_head_shares_the_embedding():
    model = Transformer(SHAPES[2])
    assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize("arch", SHAPES[1:3], ids=["untied", "tied"])
def test_kv_cache_decode_matches_full_forward(arch):
    torch.manual_seed(0)
    model = Transformer(arch).eval()
    idx = torch.randint(0, arch.vocab_size, (3, 24))
    with torch.no_grad():
        full, _ = model(idx)
    model.allocate_kv_cache(batch=3, max_len=32, dtype=torch.float32, device="cpu")
    pieces = [model.forward_step(idx[:, :10], 0),  # batched prefill
              model.forward_step(idx[:, 10:14], 10)]  # a chunk after a prefix (explicit mask)
    pieces += [model.forward_step(idx[:, t : t + 1], t) for t in range(14, 24)]  # token-by-token decode
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    model.free_kv_cache()


def test_forward_step_needs_a_cache():
    model = Transformer(SHAPES[1])
    with pytest.raises(RuntimeError, match="allocate_kv_cache"):
        model.forward_step(torch.zeros(1, 2, dtype=torch.long), 0)


def test_loss_is_next_token_cross_entropy():
    torch.manual_seed(1)
    arch = SHAPES[1]
    model = Transformer(arch)
    idx = torch.randint(0, arch.vocab_size, (2, 16))
    targets = torch.randint(0, arch.vocab_size, (2, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 16, arch.vocab_size)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, arch.vocab_size), targets.view(-1)))
    # an untrained model is close to uniform: loss near log(vocab)
    assert abs(loss.item() - math.log(arch.vocab_size)) < 0.5


def test_causality():
    torch.manual_seed(2)
    model = Transformer(SHAPES[1]).eval()
    idx = torch.randint(0, 300, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 300
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_init_scales_residual_projections():
    torch.manual_seed(3)
    arch = Architecture(8, 256, 4, 2, 64, 768, vocab_size=256)
    model = Transformer(arch)
    residual_std = 0.02 / math.sqrt(2 * arch.n_layers)
    assert model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.layers[0].self_attn.o_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(model.norm.weight == 1)


def test_odd_head_dim_is_a_user_error():
    with pytest.raises(UserError, match="d_head"):
        Transformer(Architecture(1, 32, 2, 2, 15, 64, vocab_size=32))


def test_last_only_logits_equal_the_last_row_of_full_logits():
    """A prefill that asks for the last position's logits alone gets exactly those of the full prefill."""
    torch.manual_seed(0)
    model = Transformer(Architecture(2, 64, 4, 2, 16, 96, vocab_size=256)).eval()
    prompt = torch.randint(0, 256, (2, 9))
    model.allocate_kv_cache(2, 16, dtype=torch.float32)
    full = model.forward_step(prompt, 0)
    model.allocate_kv_cache(2, 16, dtype=torch.float32)
    last = model.forward_step(prompt, 0, last_only=True)
    assert last.shape == (2, 1, 256)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
