"""Every criterion goes through the same MAC-target protocol and lands on the same MACs."""

import pytest
import torch

from idap.engine.criteria import CRITERIA, create_criterion
from idap.engine.measures import count_macs
from idap.engine.methods import METHODS
from idap.engine.pruning import (
    build_graph,
    prunable_layers,
    prune_to_macs,
    rank_channels,
)
from idap.models import create_model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", 10, 1).eval()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    return model, x, y, count_macs(model, x)[0]


def _prune(model, x, y, name, target):
    crit = create_criterion(name, **({"kind": "cnn"} if name == "vbp" else {}))
    DG = build_graph(model, x)
    layers = prunable_layers(model, {"fc"})
    if crit.needs_data:
        crit.prepare(model, [(x, y)] if crit.needs_labels else [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    ranked = rank_channels(model, DG, crit, {"fc"}, widths, 8, 0.1)
    pruned, _, macs = prune_to_macs(model, x, ranked, target)
    return pruned, macs


def test_every_method_names_a_registered_criterion():
    from idap.engine.sparse import RULES

    structured = {m.criterion for m in METHODS.values() if not m.sparse}
    assert structured <= set(CRITERIA.names())
    assert {m.criterion for m in METHODS.values() if m.sparse} == set(RULES.names())  # mask rules


@pytest.mark.parametrize(
    "name", ["l1", "l2", "taylor", "lamp", "fpgm", "bn_scale", "random", "vbp"]
)
def test_peers_land_within_one_percent_of_idap(setup, name):
    model, x, y, base = setup
    _, ref = _prune(model, x, y, "divergence", 0.5 * base)
    pruned, macs = _prune(model, x, y, name, 0.5 * base)
    assert 0.99 * 0.5 * base <= macs <= 0.5 * base
    assert abs(macs - ref) <= 0.01 * ref
    assert pruned(x).shape == (32, 10)
