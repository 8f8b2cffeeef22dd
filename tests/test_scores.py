"""Divergence formulas against hand-computed tensors (docs/method.md §1, §3)."""

import pytest
import torch
from torch import nn

from idap.engine.criteria import DivergenceImportance
from idap.engine.pruning import build_graph, prunable_layers, rank_channels
from idap.engine.scores import block_divergence, divergence_scores, flow_tap
from idap.models import create_model


class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.act(self.bn(self.conv(x))).mean((2, 3)))


def test_conv_score_matches_formula():
    net = ConvBnRelu().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.weight.uniform_(0.5, 1.5)
    x = torch.randn(6, 2, 5, 5)
    DG = build_graph(net, x)
    got = divergence_scores(net, [x[:4], x[4:]], {"conv": net.conv}, DG)["conv"]
    with torch.no_grad():
        a = torch.relu(net.bn(net.conv(x))).double()  # (B, C, H, W)
    C, H, W = a.shape[1:]
    flow = a.flatten(2).norm(dim=2).mean(0)  # E_x ||A_c(x)||_2
    wn = net.conv.weight.detach().double().flatten(1).norm(dim=1)
    expected = flow * wn / (C * H * W)
    torch.testing.assert_close(got, expected)
    raw = divergence_scores(net, [x], {"conv": net.conv}, DG, size_factor=False)["conv"]
    torch.testing.assert_close(raw, flow * wn)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_linear_score_on_tokens_matches_formula():
    net = Mlp().eval()
    x = torch.randn(5, 7, 4)  # (B, T, n): the authors' code fails on this shape
    DG = build_graph(net, x)
    got = divergence_scores(net, [x], {"fc1": net.fc1}, DG)["fc1"]
    with torch.no_grad():
        h = net.act(net.fc1(x)).double()
    expected = h.pow(2).mean((0, 1)).sqrt() * net.fc1.weight.detach().double().norm(dim=1) / 6
    torch.testing.assert_close(got, expected)


def test_flow_tap_stops_at_residual_add():
    net = create_model("resnet_tiny", 10, 1).eval()
    DG = build_graph(net, torch.randn(1, 1, 28, 28))
    block = net.layer1[0]
    tap, act = flow_tap(DG, block.conv1)
    assert tap is block.bn1 and act is not None
    assert torch.equal(act(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
    tap, act = flow_tap(DG, block.conv2)  # ReLU comes after the add: use the BN output
    assert tap is block.bn2 and act is None


class Plain(nn.Module):
    """conv -> ReLU -> conv -> ReLU: positively homogeneous, so scaling conv2 by c scales
    every conv2 score by c^2 and nothing else."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _ranking(model, x, normalize):
    DG = build_graph(model, x)
    layers = prunable_layers(model, {"fc"})
    crit = DivergenceImportance(normalize=normalize)
    crit.prepare(model, [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    return [(c.root, c.idx) for c in rank_channels(model, DG, crit, {"fc"}, widths, 2, 0.0)]


def test_layer_normalised_ranking_invariant_to_layer_scale():
    net = Plain().eval()
    x = torch.randn(8, 1, 6, 6)
    before_layer, before_none = _ranking(net, x, "layer"), _ranking(net, x, "none")
    with torch.no_grad():
        net.conv2.weight.mul_(7.0)
    assert _ranking(net, x, "layer") == before_layer
    assert _ranking(net, x, "none") != before_none  # the raw global ranking is not invariant


def test_block_divergence_is_scale_invariant():
    class Scaled(nn.Module):
        def __init__(self, block, c):
            super().__init__()
            self.block, self.c = block, c

        def forward(self, x):
            return self.block(x * self.c)

    block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    lin = nn.Conv2d(3, 3, 3, padding=1, bias=False)  # positively homogeneous: f(cx) = c f(x)
    x = torch.randn(4, 3, 6, 6)
    d1 = block_divergence(lin, [x], {"": lin})[""]
    d2 = block_divergence(lin, [3.5 * x], {"": lin})[""]
    assert d1 == pytest.approx(d2, rel=1e-6)
    with torch.no_grad():
        y = lin(x)
    expected = ((y - x).flatten(1).norm(dim=1) / (y.flatten(1).norm(dim=1) + 1e-6)).mean()
    assert d1 == pytest.approx(float(expected), rel=1e-5)
    assert block_divergence(block, [x], {"0": block[0]})["0"] > 0
