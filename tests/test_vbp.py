"""VBP (docs/method.md §6): variance scores and the mean fold that makes removing a constant
unit free."""

import copy

import pytest
import torch
from torch import nn

from idap.core.settings import Settings
from idap.engine.criteria import create_criterion
from idap.engine.measures import mac_measure
from idap.engine.methods import get_method, one_shot
from idap.engine.protocol import check_landing
from idap.engine.pruning import (
    apply_removal,
    build_graph,
    frozen_layers,
    prunable_layers,
    rank_channels,
)
from idap.models import create_model


def _ranked(model, x, kind, classifier):
    DG = build_graph(model, x)
    ignored = frozen_layers(model, DG, classifier)
    crit = create_criterion("vbp", kind=kind)
    crit.prepare(model, [x[: len(x) // 2], x[len(x) // 2 :]], DG, prunable_layers(model, ignored))
    widths = {n: m.weight.shape[0] for n, m in prunable_layers(model, ignored).items()}
    return crit, rank_channels(model, DG, crit, ignored, widths, 1, 0.0)


def _removal_error(model, x, cand, crit):
    pruned = copy.deepcopy(model)
    apply_removal(pruned, x, [cand], crit)
    with torch.no_grad():
        return (pruned(x) - model(x)).abs().max().item()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNet(nn.Module):
    """conv -> BN -> ReLU -> 1x1 conv (no bias) -> BN -> ReLU -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_mlp_constant_unit_is_ranked_first_and_free_to_remove_after_the_fold():
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight[5] = 0.0
        model.fc1.bias[5] = 0.8  # GELU(0.8): a constant activation with a non-zero mean
    x = torch.randn(64, 8)
    crit, ranked = _ranked(model, x, "mlp", {"fc2"})
    assert (ranked[0].root, ranked[0].idx, ranked[0].score) == ("fc1", 5, 0.0)
    assert _removal_error(model, x, ranked[0], crit) <= 1e-5
    assert _removal_error(model, x, ranked[0], None) > 1e-2  # without the fold it is visible


def test_welford_statistics_match_float64_reference():
    model = MLP().eval()
    x = torch.randn(96, 8)
    crit, _ = _ranked(model, x, "mlp", {"fc2"})
    with torch.no_grad():
        h = model.act(model.fc1(x)).double()
    assert torch.allclose(crit.stats["fc2"].mean, h.mean(0), atol=1e-12)
    assert torch.allclose(crit.stats["fc2"].var, h.var(0, unbiased=False), atol=1e-12)


def test_cnn_fold_goes_into_the_following_batchnorm():
    torch.manual_seed(1)
    model = ConvNet()
    with torch.no_grad():
        model.conv1.weight[2] = 0.0
        model.bn1.bias[2] = 0.5  # BN of a zero map is its bias here: constant 0.5 after ReLU
        model.bn1.running_mean.zero_()
        model.bn2.running_mean.normal_()
        model.bn2.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(16, 3, 10, 10)
    crit, ranked = _ranked(model, x, "cnn", {"fc"})
    cand = next(c for c in ranked if (c.root, c.idx) == ("conv1", 2))
    assert cand.score < 1e-12 and cand.score <= ranked[0].score + 1e-12  # ties: dead ReLUs
    assert _removal_error(model, x, cand, crit) <= 1e-5
    assert _removal_error(model, x, cand, None) > 1e-2


def test_vit_mlp_units_fold_exactly():
    model = create_model("vit_tiny", 10, 1).eval()
    blk = model.blocks[0].mlp
    with torch.no_grad():
        blk.fc1.weight[7] = 0.0
        blk.fc1.bias[7] = 1.0
    x = torch.randn(8, 1, 28, 28)
    crit, ranked = _ranked(model, x, "mlp", {"head"})
    assert {c.root for c in ranked} <= {f"blocks.{i}.mlp.fc1" for i in range(len(model.blocks))}
    assert (ranked[0].root, ranked[0].idx) == ("blocks.0.mlp.fc1", 7)
    assert _removal_error(model, x, ranked[0], crit) <= 1e-5
    assert _removal_error(model, x, ranked[0], None) > 1e-3
    assert crit.heads(model) == {}  # heads are not VBP's to prune


def test_one_shot_methods_keep_the_recovery_budget():
    prune = Settings.from_config({"prune": {"steps": 6, "recovery_iters": 50}}).prune
    assert get_method("vbp_cnn").one_shot and get_method("vbp").one_shot
    assert one_shot(prune) == {"steps": 1, "recovery_iters": 300}


def test_landing_check_names_the_miss():
    macs = mac_measure(torch.zeros(1, 1, 4, 4), 0.01)
    check_landing("l1", 35.2, 100.0, 0.65, macs)  # 0.57% above the target MACs: fine
    with pytest.raises(
        RuntimeError,
        match=r"l1 missed its MAC target: reached -60.00% .*"
        r"\+14.29% of the target MACs \(tolerance ±1%\)",
    ):
        check_landing("l1", 40.0, 100.0, 0.65, macs)
    with pytest.raises(RuntimeError, match=r"-2.86% of the target MACs"):
        check_landing("idap", 34.0, 100.0, 0.65, macs)


def test_mlp_vbp_on_a_cnn_names_what_it_scores():
    """Not the generic 'MAC target unreachable' line: the criterion has nothing to score."""
    with pytest.raises(ValueError, match=r"nothing to score in ConvNet: it scores hidden units.*"):
        _ranked(ConvNet().eval(), torch.randn(8, 3, 10, 10), "mlp", {"fc"})
    _ranked(ConvNet().eval(), torch.randn(8, 3, 10, 10), "cnn", {"fc"})  # the CNN kind does
