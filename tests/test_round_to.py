"""Channel rounding (prune.round_to): every pruned width stays a multiple of it, whatever
units the MAC-target search takes, and targets still land within their tolerance."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from idap.engine.criteria import create_criterion
from idap.engine.measures import count_macs
from idap.engine.pruning import (
    apply_removal,
    build_graph,
    prunable_layers,
    prune_to_macs,
    rank_channels,
)
from idap.models import create_model


def _ranked(name: str, round_to: int, keep=(4, 0.1)):
    torch.manual_seed(0)
    model = create_model(name, 10, 1).eval()
    x = torch.randn(2, 1, 28, 28)
    DG = build_graph(model, x)
    widths = {n: m.weight.shape[0] for n, m in prunable_layers(model, {"fc"}).items()}
    ranked = rank_channels(model, DG, create_criterion("l1"), {"fc"}, widths, *keep, round_to)
    return model, x, widths, ranked


def _widths(model) -> dict[str, int]:
    return {n: m.weight.shape[0] for n, m in prunable_layers(model, {"fc"}).items()}


@pytest.mark.parametrize("round_to", [8, 16])
def test_any_selection_of_units_keeps_widths_on_the_grid(round_to):
    """Prefixes (the bisection) and arbitrary subsets (the refinement's fills and swaps)."""
    model, x, before, ranked = _ranked("resnet_tiny", round_to)
    assert ranked and all(len(c.idxs) % round_to == 0 for c in ranked)
    rng = random.Random(0)
    picks = [ranked[:n] for n in (1, len(ranked) // 3, len(ranked))]
    picks += [rng.sample(ranked, k) for k in (2, 5, len(ranked) // 2)]
    for chosen in picks:
        m = _copy(model)
        apply_removal(m, x, chosen)
        after = _widths(m)
        assert after != before or not chosen
        assert all(w % round_to == 0 for w in after.values()), after
        assert min(after.values()) >= 8  # the floor (4, or 10% of 16) rounded up to 8
        assert m(x).shape == (2, 10)


def test_an_off_grid_width_is_first_rounded_down_by_its_lowest_scored_channels():
    """A 24-wide group of resnet_micro with round_to 5: its first unit removes the 24 % 5 = 4
    lowest-scored channels, each later unit 5 more and all of the earlier ones, so units
    taken out of order (the refinement's fills) still leave a multiple of 5."""
    model, x, before, ranked = _ranked("resnet_micro", 5, keep=(1, 0.0))
    root = next(c.root for c in ranked if before[c.root] == 24)
    units = sorted((c for c in ranked if c.root == root), key=lambda c: len(c.idxs))
    assert [len(c.idxs) for c in units] == [4, 9, 14, 19]
    for a, b in zip(units, units[1:], strict=False):
        assert set(a.idxs) < set(b.idxs)
    for chosen, width in (([units[0]], 20), ([units[2], units[0]], 10), ([units[1]], 15)):
        m = _copy(model)
        apply_removal(m, x, chosen)
        assert _widths(m)[root] == width


def test_the_mac_target_search_lands_within_tolerance_with_rounding():
    model, x, _, ranked = _ranked("resnet_tiny", 8)
    macs0 = count_macs(model, x)[0]
    for reduction in (0.5, 0.8):
        goal = (1 - reduction) * macs0
        pruned, edit, macs = prune_to_macs(model, x, ranked, goal, 0.02, max_refine=128)
        assert 0.98 * goal <= macs <= goal, (reduction, macs / macs0)
        assert all(w % 8 == 0 for w in _widths(pruned).values())
        assert all(len(idxs) % 8 == 0 for idxs in edit.values())


def test_round_to_one_is_the_channel_ranking_unchanged():
    _, _, _, plain = _ranked("resnet_tiny", 1)
    assert all(c.rest == () for c in plain)
    assert len(plain) == len({(c.root, c.idx) for c in plain})


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_an_unrefined_step_does_not_jump_past_its_stage_goal():
    """With coarse units one unit can remove more than the tolerance: an intermediate step
    (unrefined, to save probes) that would take the first unit past its target and past the
    stage goal's band is refined instead, as removal cannot be undone by a later step."""
    from types import SimpleNamespace

    from idap.engine.measures import mac_measure
    from idap.engine.protocol import Protocol

    model, x, _, ranked = _ranked("resnet20", 8)
    tol = 0.02
    stub = SimpleNamespace(
        example=x,
        criterion=None,
        measure=mac_measure(x, tol),
        prune=SimpleNamespace(recovery_iters=0),
        rank=lambda m: (ranked, {"fc"}),
        settle=lambda m, iters: None,
    )
    stub.cost = lambda m, macs=None, params=None: Protocol.cost(stub, m, macs, params)
    stub.prune_to = lambda m, r, t, refine=True: Protocol.prune_to(stub, m, r, t, refine)

    def prefix(n):
        m = _copy(model)
        apply_removal(m, x, ranked[:n])
        return count_macs(m, x)[0]

    # the first unit whose removal alone takes more than 3 tolerances of the MACs left
    n = next(n for n in range(len(ranked)) if prefix(n + 1) < (1 - 3 * tol) * prefix(n))
    target = prefix(n) - 1  # just below: the bisection takes unit n
    goal = 0.999 * target  # the stage goal: one step further on
    _, _, unrefined = Protocol.prune_step(stub, model, target, refine=False)
    assert unrefined < (1 - tol) * goal  # the old behaviour: past the goal's band
    _, _, cost = Protocol.prune_step(stub, model, target, refine=False, goal=goal)
    assert (1 - tol) * target <= cost <= target


def test_a_refined_step_no_unit_selection_can_land_is_not_taken_within_the_band_above():
    """Near the floors every unit left can be coarser than the band under the target (seen
    on resnet20 at -80% with round_to 8: no selection of the units left landed). A model
    already within the tolerance above the target stays as it is (the landing check is
    two-sided) instead of overshooting; above the band the step is taken."""
    from types import SimpleNamespace

    from idap.engine.measures import mac_measure
    from idap.engine.protocol import Protocol, check_landing

    model, x, _, ranked = _ranked("resnet20", 8)
    tol = 0.02
    base = count_macs(model, x)[0]

    def alone(c):
        m = _copy(model)
        apply_removal(m, x, [c])
        return count_macs(m, x)[0]

    coarse = next(c for c in ranked if alone(c) < (1 - 4 * tol) * base)  # the only unit left
    stub = SimpleNamespace(
        example=x,
        criterion=None,
        measure=mac_measure(x, tol),
        prune=SimpleNamespace(recovery_iters=0),
        rank=lambda m: ([coarse], {"fc"}),
        settle=lambda m, iters: None,
    )
    stub.cost = lambda m, macs=None, params=None: Protocol.cost(stub, m, macs, params)
    stub.prune_to = lambda m, r, t, refine=True: Protocol.prune_to(stub, m, r, t, refine)

    target = base / (1 + tol / 2)  # the model is 1% above it
    kept, edit, cost = Protocol.prune_step(stub, model, target, refine=True)
    assert kept is model and edit == {} and cost == base
    check_landing("l1", cost, base / 0.2, 1 - 0.2 * target / base, stub.measure)  # goal: target
    target = base / (1 + 2 * tol)  # beyond the band above: the step is taken
    _, edit, cost = Protocol.prune_step(stub, model, target, refine=True)
    assert edit and cost < (1 - tol) * target
