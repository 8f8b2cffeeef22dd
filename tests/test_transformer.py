"""Transformer support: head and MLP-unit divergences, head pruning, reload by replay."""

import copy

import pytest
import torch
from helpers import tiny_vit
from timm.models.vision_transformer import Attention

from idap.engine.criteria import DivergenceImportance
from idap.engine.measures import count_macs
from idap.engine.pruning import (
    HEADS,
    Candidate,
    apply_removal,
    build_graph,
    frozen_layers,
    prunable_layers,
    prune_to_macs,
    rank_channels,
)
from idap.engine.scores import attention_modules, head_scores
from idap.models import HeadAttention
from idap.models.artifact import resize_to_state


def test_head_score_matches_manual_attention_and_sums_to_layer():
    vit = tiny_vit()
    x = torch.randn(3, 1, 16, 16)
    attn = vit.blocks[0].attn
    got = head_scores(vit, [x], {"blocks.0.attn": attn})["blocks.0.attn"]
    captured = {}
    attn.register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0]))
    with torch.no_grad():
        vit(x)
        t = captured["in"]  # (B, N, C): the attention block's input after norm1
        B, N, C = t.shape
        H, hd = attn.num_heads, attn.head_dim
        q, k, v = attn.qkv(t).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).double()
        o = torch.softmax(q @ k.transpose(-2, -1) / hd**0.5, dim=-1) @ v  # (B, H, N, hd)
        flow = o.pow(2).sum((2, 3)).sqrt().mean(0)  # E_x ||O_h||_F
        w = attn.qkv.weight.double().view(3, H, hd, C)
        wn = w.pow(2).sum((2, 3)).sqrt().sum(0)
    expected = flow * wn / N
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


def test_heads_are_additive():
    """Silencing one head (its value weights zeroed) removes exactly its score from the
    layer's total and leaves every other head's score as it was."""
    vit = tiny_vit()
    x = torch.randn(3, 1, 16, 16)
    attn = vit.blocks[0].attn
    before = head_scores(vit, [x], {"blocks.0.attn": attn})["blocks.0.attn"]
    H, hd, C = attn.num_heads, attn.head_dim, attn.qkv.in_features
    with torch.no_grad():
        w = attn.qkv.weight.view(3, H, hd, C)
        w[2, 1].zero_()  # V of head 1
        if attn.qkv.bias is not None:
            attn.qkv.bias.view(3, H, hd)[2, 1].zero_()
    after = head_scores(vit, [x], {"blocks.0.attn": attn})["blocks.0.attn"]
    assert after[1].item() == 0.0
    keep = [0, 2, 3]
    torch.testing.assert_close(after[keep], before[keep], rtol=1e-6, atol=1e-12)
    assert after.sum().item() == pytest.approx((before.sum() - before[1]).item(), rel=1e-6)


def test_head_pruning_reaches_target_and_reloads(tmp_path):
    vit = tiny_vit()
    x = torch.randn(4, 1, 16, 16)
    DG = build_graph(vit, x)
    frozen = frozen_layers(vit, DG, {"head"})
    assert "blocks.0.attn.qkv" in frozen and "blocks.0.mlp.fc2" in frozen
    assert "blocks.0.mlp.fc1" not in frozen
    layers = prunable_layers(vit, frozen)
    crit = DivergenceImportance()
    crit.prepare(vit, [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    ranked = rank_channels(vit, DG, crit, frozen, widths, 8, 0.1)
    assert any(c.handler == HEADS for c in ranked)
    base = count_macs(vit, x)[0]
    pruned, edit, macs = prune_to_macs(vit, x, ranked, 0.6 * base)
    assert macs <= 0.6 * base
    assert pruned(x).shape == (4, 5)
    heads = [a.num_heads for a in attention_modules(pruned).values()]
    assert all(h >= 1 for h in heads)
    # the embedding width never changes
    assert pruned.blocks[0].mlp.fc2.out_features == 32
    # reload by replaying the stored shapes on a fresh model: identical outputs
    fresh = tiny_vit()
    state = pruned.state_dict()
    resize_to_state(fresh, state)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    assert [a.num_heads for a in attention_modules(fresh).values()] == heads


@pytest.mark.parametrize("kind", ["timm", "torchvision"])
def test_attention_macs_are_exact_before_and_after_head_pruning(kind):
    # qkv + proj linears + 2·H·N²·head_dim; torch-pruning's own timm counter assumes a
    # square proj, which stops being true once a head is gone.
    torch.manual_seed(0)
    C, H, N = 32, 4, 17
    attn = Attention(C, H) if kind == "timm" else HeadAttention(C, H)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            out = self.attn(x)
            return out[0] if isinstance(out, tuple) else out

    net = Wrap().eval()
    x = torch.randn(1, N, C)

    def expected(heads):
        inner = heads * C // H
        return N * C * 3 * inner + N * inner * C + 2 * N * N * inner

    assert count_macs(net, x)[0] == expected(4)
    apply_removal(net, x, [Candidate(0.0, "attn", HEADS, 2)])
    assert attn.num_heads == 3 and count_macs(net, x)[0] == expected(3)


def test_a_head_too_coarse_for_the_gap_is_filled_with_mlp_units():
    # Heads ranked first: a whole head (~7% of this ViT's MACs) cannot land in a 1% band,
    # so the last gap is closed with the next-ranked MLP units instead of overshooting.
    vit = tiny_vit()
    x = torch.randn(4, 1, 16, 16)
    DG = build_graph(vit, x)
    frozen = frozen_layers(vit, DG, {"head"})
    layers = prunable_layers(vit, frozen)
    crit = DivergenceImportance()
    crit.prepare(vit, [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    ranked = rank_channels(vit, DG, crit, frozen, widths, 1, 0.0)
    base = count_macs(vit, x)[0]
    heads_first = sorted(ranked, key=lambda c: (c.handler != HEADS, c.score))
    for target in (0.83, 0.9):
        _, edit, macs = prune_to_macs(vit, x, heads_first, target * base, tolerance=0.01)
        assert 0.99 * target * base <= macs <= target * base
        assert any(k.endswith(":heads") for k in edit) and any("mlp.fc1" in k for k in edit)
    # units first: the head that crosses the budget has no unit ranked after it, so some
    # of the units already chosen are given back instead
    units_first = sorted(ranked, key=lambda c: (c.handler == HEADS, c.score))
    n_units = sum(c.handler != HEADS for c in ranked)
    no_units = copy.deepcopy(vit)
    apply_removal(no_units, x, units_first[:n_units])
    target = count_macs(no_units, x)[0] / base - 0.045  # every unit and a bit over one head
    _, edit, macs = prune_to_macs(vit, x, units_first, target * base, tolerance=0.01)
    assert 0.99 * target * base <= macs <= target * base
    assert any(k.endswith(":heads") for k in edit)
