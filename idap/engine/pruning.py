"""Channel removal to a measured MAC budget, through torch-pruning dependency groups.

Every criterion goes through the same protocol here: per-layer floor, global ranking,
bisection on the number of removed channels with MACs measured on the pruned copy, then a
greedy refinement that lands within ``tolerance`` of the budget from below.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from idap.engine.criteria import Criterion
from idap.engine.measures import Measure, mac_measure
from idap.engine.scores import attention_modules

_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
HEADS = "heads"  # Candidate.handler of an attention head (root = the attention module)


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph, traced with one example forward.

    Raises:
        RuntimeError: a conv/linear layer was not reached by the traced forward
            (data-dependent control flow): its couplings are unknown, so pruning would be
            silently wrong.
    """
    was = model.training
    model.eval()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    model.train(was)
    missing = [
        n
        for n, m in model.named_modules()
        if isinstance(m, _ROOT_TYPES) and m not in DG.module2node
    ]
    if missing:
        raise RuntimeError(
            f"torch-pruning cannot trace {type(model).__name__}: layer(s) "
            f"{', '.join(missing)} not reached by the example forward (data-dependent "
            "control flow?); it cannot be pruned safely"
        )
    return DG


def prunable_layers(model: nn.Module, ignored: set[str]) -> dict[str, nn.Module]:
    """Conv and linear layers whose outputs may be scored (classifier excluded)."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in ignored
    }


def frozen_layers(model: nn.Module, DG: tp.DependencyGraph, classifier: set[str]) -> set[str]:
    """Layers whose output channels are never pruned as channels.

    The classifier; and in transformers the fused qkv (pruned by whole heads instead) and
    every layer writing the residual stream (the embedding width stays fixed).
    """
    frozen = set(classifier)
    names = {m: n for n, m in model.named_modules()}
    for name, attn in attention_modules(model).items():
        frozen.add(f"{name}.qkv")
        group = DG.get_pruning_group(attn.proj, tp.prune_linear_out_channels, idxs=[0])
        for dep, _ in group:
            if DG.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names:
                frozen.add(names[dep.target.module])
    return frozen


def min_keep(initial_width: int, keep_abs: int, keep_frac: float) -> int:
    """Units a layer always keeps: max(keep_abs, keep_frac · initial width), capped at its width."""
    return min(initial_width, max(keep_abs, int(round(keep_frac * initial_width + 0.5 - 1e-9))))


@dataclass
class Candidate:
    """A unit of removal: one channel or head (``idx``), or with ``prune.round_to`` the
    channels of one group (``idx`` and ``rest``) whose removal keeps its width a multiple
    of it (see ``_chunks``)."""

    score: float
    root: str
    handler: str
    idx: int
    rest: tuple[int, ...] = ()

    @property
    def idxs(self) -> tuple[int, ...]:
        return (self.idx, *self.rest)


def _chunks(order: list[int], scores: torch.Tensor, width: int, round_to: int):
    """Units of one group under ``round_to``: the k-th removes the ``order`` prefix (lowest
    score first) that leaves ``width`` minus its length the k-th multiple of ``round_to``
    below ``width``. Each holds every channel of the ones before it, so any selection of
    them removes the largest one's prefix and keeps the width on the grid. Score of a unit:
    the mean score of the channels it adds."""
    end = width % round_to or round_to
    start = 0
    while end <= len(order):
        yield float(scores[order[start:end]].mean()), order[:end]
        start, end = end, end + round_to


def rank_channels(
    model: nn.Module,
    DG: tp.DependencyGraph,
    criterion: Criterion,
    ignored: set[str],
    initial_widths: dict[str, int],
    keep_abs: int,
    keep_frac: float,
    round_to: int = 1,
) -> list[Candidate]:
    """All removable channels, lowest score first, with each layer's floor excluded.

    With ``round_to`` > 1 the units are runs of channels of one group (``_chunks``): any
    selection of them leaves every pruned width a multiple of ``round_to`` (the floor
    rounded up to one), so vectorised kernels need no padding. Heads stay whole.
    """
    names = {m: n for n, m in model.named_modules()}
    ignored_mods = [model.get_submodule(n) for n in ignored]
    out: list[Candidate] = []
    scored = False
    for group in DG.get_all_groups(ignored_layers=ignored_mods, root_module_types=_ROOT_TYPES):
        imp = criterion(group)
        if imp is None:
            continue
        scored = True
        root_dep = group[0].dep
        root_name = names[root_dep.target.module]
        width = len(imp)
        floor = min_keep(initial_widths.get(root_name, width), keep_abs, keep_frac)
        if width <= floor:
            continue
        imp = imp.double().cpu()
        if not torch.isfinite(imp).all():
            raise RuntimeError(f"non-finite importance in group rooted at {root_name}")
        order = [int(i) for i in torch.argsort(imp, stable=True)[: width - floor]]
        handler = root_dep.handler.__name__
        if round_to == 1:
            out.extend(Candidate(float(imp[i]), root_name, handler, i) for i in order)
        else:
            out.extend(
                Candidate(score, root_name, handler, prefix[-1], tuple(prefix[:-1]))
                for score, prefix in _chunks(order, imp, width, round_to)
            )
    heads = criterion.heads(model)
    if not scored and not heads:
        raise ValueError(
            f"criterion {type(criterion).__name__} finds nothing to score in "
            f"{type(model).__name__}: it scores {criterion.scope}"
        )
    for name, h in heads.items():
        if name in ignored or len(h) <= 1:
            continue
        h = h.double().cpu()
        order = torch.argsort(h, stable=True)[: len(h) - 1]  # every layer keeps >= 1 head
        out.extend(Candidate(float(h[i]), name, HEADS, int(i)) for i in order)
    out.sort(key=lambda c: c.score)
    return out


def head_indices(attn: nn.Module, heads: list[int]) -> list[int]:
    """Output rows of the fused qkv linear that belong to ``heads`` (q, k and v parts)."""
    H, hd = attn.num_heads, attn.head_dim
    return sorted(p * H * hd + h * hd + i for p in range(3) for h in heads for i in range(hd))


def fix_attention(attn: nn.Module) -> None:
    """Make an attention module's head count agree with its (pruned) qkv weight."""
    attn.num_heads = attn.qkv.out_features // (3 * attn.head_dim)
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = attn.num_heads * attn.head_dim


def apply_removal(
    model: nn.Module,
    example: torch.Tensor,
    chosen: list[Candidate],
    criterion: Criterion | None = None,
) -> dict:
    """Remove ``chosen`` channels from ``model`` in place; return the edit record.

    With ``criterion``, its ``fold`` adjusts the model first (VBP folds the removed units'
    means into the next layer); MAC probes leave it out, weights do not change MACs.
    """
    DG = build_graph(model, example)
    by_root: dict[tuple[str, str], list[int]] = {}
    for c in chosen:
        by_root.setdefault((c.root, c.handler), []).extend(c.idxs)
    # round_to units of one group overlap (``_chunks``): each channel once
    by_root = {k: sorted(set(v)) for k, v in by_root.items()}
    if criterion is not None:
        criterion.fold(model, DG, by_root)
    edit = {}
    for (root, handler), idxs in sorted(by_root.items()):
        module = model.get_submodule(root)
        if handler == HEADS:
            group = DG.get_pruning_group(
                module.qkv, tp.prune_linear_out_channels, idxs=head_indices(module, idxs)
            )
            group.prune()
            fix_attention(module)
            edit[f"{root}:heads"] = sorted(idxs)
            continue
        fn = (
            tp.prune_conv_out_channels
            if isinstance(module, nn.Conv2d)
            else tp.prune_linear_out_channels
        )
        group = DG.get_pruning_group(module, fn, idxs=sorted(idxs))
        if not DG.check_pruning_group(group):
            raise RuntimeError(f"pruning {len(idxs)} channels of {root} would empty a layer")
        group.prune()
        edit[root] = sorted(idxs)
    return edit


def _first(lo: int, hi: int, ok) -> int:
    """Smallest n in (lo, hi] with ``ok(n)``, for a monotone ``ok`` false at lo, true at hi."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def prune_to_macs(
    model: nn.Module,
    example: torch.Tensor,
    ranked: list[Candidate],
    target_macs: float,
    tolerance: float = 0.01,
    max_refine: int = 32,
    criterion: Criterion | None = None,
) -> tuple[nn.Module, dict, int]:
    """:func:`prune_to_target` with MACs as the measure."""
    pruned, edit, macs = prune_to_target(
        model,
        example,
        ranked,
        target_macs,
        tolerance,
        max_refine,
        criterion,
        mac_measure(example, tolerance),
    )
    return pruned, edit, int(macs)


def prune_to_target(
    model: nn.Module,
    example: torch.Tensor,
    ranked: list[Candidate],
    target: float,
    tolerance: float,
    max_refine: int,
    criterion: Criterion | None,
    measure: Measure,
    cache: dict[tuple[int, ...], float] | None = None,
) -> tuple[nn.Module, dict, float]:
    """Smallest removal (in ranking order) whose ``measure`` is <= target, refined to within
    tolerance (MACs, parameters or a measured latency: ``idap.engine.measures``).
    ``cache`` (selection -> measure) may be shared by searches over the same ``ranked``.

    Returns:
        (pruned copy, edit record {root: removed idxs}, its measure).

    Raises:
        RuntimeError: the target is unreachable under the floors (says by how much).
    """
    # Only measures are cached: holding every probed copy cost 13 GB on VGG19-BN. A timed
    # measure is noisy; the cache also gives the search one value per candidate.
    cache = {} if cache is None else cache

    def probe(sel: tuple[int, ...]) -> float:
        if sel not in cache:
            m = copy.deepcopy(model)
            apply_removal(m, example, [ranked[i] for i in sel])
            cache[sel] = measure.of_copy(m)
        return cache[sel]

    def build(sel: tuple[int, ...]) -> tuple[nn.Module, dict, float]:
        m = copy.deepcopy(model)
        edit = apply_removal(m, example, [ranked[i] for i in sel], criterion)
        return m, edit, probe(sel)

    base = measure(model)
    if base <= target:
        return copy.deepcopy(model), {}, base
    lo, hi = 0, len(ranked)  # invariant: cost(lo) > target, cost(hi) <= target (checked)
    full = probe(tuple(range(hi)))
    if full > target:
        raise RuntimeError(
            f"{measure.noun} target unreachable: pruning every channel above the floors "
            f"leaves {measure.fmt(full)} > target {measure.fmt(target)} "
            f"(misses by {100 * (full / target - 1):.1f}%); lower the target or the floor"
        )
    hi = _first(lo, hi, lambda n: probe(tuple(range(n))) <= target)
    best = tuple(range(hi))
    low = (1 - tolerance) * target
    if probe(best) < low and max_refine > 0 and ranked[hi - 1].handler == HEADS:
        # A whole head can be several % of a small ViT: keep it, and fill the gap with the
        # next-ranked channels instead (bisection on how many; channels are fine-grained).
        head_out = tuple(range(hi - 1))
        rest = tuple(j for j in range(hi, len(ranked)) if ranked[j].handler != HEADS)
        if rest and probe(head_out + rest) <= target:
            m = _first(0, len(rest), lambda m: probe(head_out + rest[:m]) <= target)
            filled = head_out + rest[:m]
            if probe(filled) > probe(best):
                best = filled
        if probe(best) < low:
            # Or remove the head and give back the last-ranked channels of the prefix: the
            # most MACs still <= target (bisection on how many channels are kept).
            units = [j for j in range(hi - 1) if ranked[j].handler != HEADS]

            def give_back(m: int) -> tuple[int, ...]:
                kept = set(units[len(units) - m :]) if m else set()
                return tuple(i for i in range(hi) if i not in kept)

            a = len(units)  # give_back(0) is the prefix itself, <= target
            if units and probe(give_back(a)) > target:
                a = _first(0, a, lambda m: probe(give_back(m)) > target) - 1
            if probe(give_back(a)) > probe(best):
                best = give_back(a)
    if probe(best) < low and max_refine > 0:
        # One channel can be several % of a small net's MACs. Start from the largest prefix
        # still above the budget and fill it with later-ranked, cheaper channels: land in the
        # band if one addition can, else take the lowest-ranked one that stays above budget.
        sel, probes = tuple(range(hi - 1)), 0
        while probes < max_refine:
            step_to = None
            for j in range(hi - 1, min(len(ranked), hi - 1 + max_refine)):
                if j in sel or probes >= max_refine:
                    continue
                cost = probe(sel + (j,))
                probes += 1
                if low <= cost <= target:
                    return build(sel + (j,))
                if probe(best) < cost <= target:
                    best = sel + (j,)
                if step_to is None and target < cost < probe(sel):
                    step_to = j
                    break
            if step_to is None:
                break
            sel = sel + (step_to,)
    if probe(best) < low and max_refine > 0:
        # Still below the band (at high sparsity one channel can be wider than the band):
        # give back one removed channel, most important first; if that overshoots the
        # budget, remove one later-ranked channel instead of it (a swap).
        probes = 0
        for i in reversed(best):
            if probes >= max_refine:
                break
            back = tuple(x for x in best if x != i)
            cost = probe(back)
            probes += 1
            if low <= cost <= target:
                return build(back)
            if cost <= target:
                if cost > probe(best):
                    best = back
                continue
            for j in range(hi, len(ranked)):
                if probes >= max_refine:
                    break
                if j in back:
                    continue
                swap = back + (j,)
                cost = probe(swap)
                probes += 1
                if low <= cost <= target:
                    return build(swap)
                if probe(best) < cost <= target:
                    best = swap
    return build(best)
