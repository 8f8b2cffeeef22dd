"""Stage `truncate_layers`: IDAP++ stage 2, flow-guided layer truncation (docs/method.md §3).

Blocks whose input and output shapes are equal are replaced by identity, least-changing
(lowest block divergence) first, each tried removal recovered and accepted or reverted on
val. In target mode a final filter step closes any gap to the target (MACs by default,
``prune.target_kind``), so every method ends on the same cost.

Optional variant ``truncate.replace: projection`` (docs/method.md §3, beyond the paper): a
shape-changing block (e.g. a downsampling residual block) becomes a candidate too and is
replaced by a 1x1 conv (its stride, with bias) fitted by least squares on val activations,
followed by ReLU when the block's outputs are non-negative. Such a block's divergence is
measured against its fitted projection, D_b = E[||T_out - P(T_in)|| / ||T_out||], so all
candidates rank by the relative error of the module that would replace them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from idap.engine.projection import fit_projections, projection_divergence, projection_stride
from idap.engine.protocol import Protocol, Timer, clone, dynamics_row
from idap.engine.scores import block_divergence
from idap.engine.stats import paired_bootstrap_bounds
from idap.models import ModelSpec
from idap.stages.checkpoint import seed_step
from idap.stages.state import RunContext, RunState

REPLACE_MODES = ("identity", "projection")


def candidates(
    model: nn.Module, spec: ModelSpec, example: torch.Tensor, replace: str = "identity"
) -> dict[str, nn.Module]:
    """Live blocks of the architecture's block types whose output shape equals their input's
    (with ``replace="projection"`` also those a strided 1x1 conv can map onto their output
    shape), excluding any block that is the last live one of its stage."""
    return {n: model.get_submodule(n) for n in _candidate_kinds(model, spec, example, replace)}


def _replace_mode(replace: str) -> str:
    if replace not in REPLACE_MODES:
        raise ValueError(f"truncate.replace must be one of {REPLACE_MODES}, got {replace!r}")
    return replace


@torch.no_grad()
def _candidate_kinds(
    model: nn.Module, spec: ModelSpec, example: torch.Tensor, replace: str = "identity"
) -> dict[str, int | None]:
    """Candidate name -> None (shape-preserving: identity) or the stride of its projection."""
    _replace_mode(replace)
    shapes: dict[str, tuple] = {}
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, spec.block_types)}
    hooks = [
        m.register_forward_hook(
            lambda _m, i, o, n=n: shapes.__setitem__(n, (tuple(i[0].shape), tuple(o.shape)))
        )
        for n, m in blocks.items()
    ]
    was = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    live_per_stage = {s: sum(1 for n in blocks if n.startswith(s + ".")) for s in spec.stages}
    out: dict[str, int | None] = {}
    for n in blocks:
        stage = next((s for s in spec.stages if n.startswith(s + ".")), None)
        if stage is None or live_per_stage[stage] < 2 or n not in shapes:
            continue
        if shapes[n][0] == shapes[n][1]:
            out[n] = None
        elif replace == "projection" and (stride := projection_stride(*shapes[n])) is not None:
            out[n] = stride
    return out


@dataclass
class Verdict:
    """A tried removal's acceptance: why, and (equal_macs) the filter branch that beat it."""

    accepted: bool
    why: str
    branch: tuple[nn.Module, dict, dict] | None = None  # (model, edit, metrics)


def _judge(
    proto: Protocol,
    state,
    trial_cost: float,
    res: dict,
    dense_val: float,
    truncate,
    seed: int,
    goal: float,
) -> Verdict:
    """Accept or reject a recovered removal (docs/method.md §3)."""
    p = proto.prune
    if p.mode == "rollback":  # the total drop vs the dense model stays within max_drop
        drop = dense_val - res["val_acc1"]
        return Verdict(drop <= p.max_drop, f"drop vs dense {drop:+.2f} pp, max_drop {p.max_drop}")
    if truncate.acceptance == "paper":
        low, _ = paired_bootstrap_bounds(state.cur["val_correct"], res["val_correct"])
        # the cap is measured against the dense model: stage 2 may add max_added_drop to
        # the drop stage 1 left, over all its accepted removals together
        added = (dense_val - res["val_acc1"]) - (dense_val - state.entry_val)
        ok_cost = low <= truncate.block_tolerance
        ok_cap = added <= truncate.max_added_drop
        why = f"95% lower bound {low:+.2f} vs tolerance {truncate.block_tolerance}"
        why += f", stage-2 drop {added:+.2f} vs cap {truncate.max_added_drop}"
        return Verdict(ok_cost and ok_cap, why)
    # the same cost as the removal, but never below the stage's goal: a removal may land
    # inside the tolerance band under it, and a kept branch landing within the tolerance of
    # that would compound the two misses
    branch = _filter_alternative(
        proto,
        state.model,
        max(trial_cost, goal),
        _trial_iters(proto, truncate),
        seed,
        state.step,
    )
    if branch is None:
        return Verdict(True, f"filter pruning cannot reach its {proto.measure.plural}")
    model, edit, alt = branch
    low, _ = paired_bootstrap_bounds(alt["val_correct"], res["val_correct"])
    why = (
        f"vs equal-MAC filter branch {alt['val_acc1']:.2f}: 95% lower bound of the paired "
        f"drop {low:+.2f}, margin {truncate.equal_macs_margin}"
    )
    if low <= truncate.equal_macs_margin:
        return Verdict(True, why)
    return Verdict(False, why, (model, edit, alt))


def _trial_iters(proto: Protocol, truncate) -> int:
    """Recovery iterations of one branch of a trial. A trial costs ``recovery_iters`` under
    either rule: equal_macs splits them between the removal and its filter branch, as
    doubling them ate the final fine-tune (on ResNet-20 at -80%, 3-4 trials spent 300 of
    the 312 iterations the fine-tune would have had)."""
    if truncate.acceptance != "equal_macs" or proto.prune.mode == "rollback":
        return truncate.recovery_iters
    return truncate.recovery_iters // 2  # the config refuses 1 (nothing to split)


def _filter_alternative(
    proto: Protocol, model: nn.Module, cost: float, iters: int, seed: int, step: int
) -> tuple[nn.Module, dict, dict] | None:
    """Filter pruning from ``model`` to ``cost`` (the target measure; MACs by default) with
    the trial's recovery: the branch a removal must beat under equal_macs. None when the
    floors keep filter pruning above it."""
    ranked, _ = proto.rank(model)
    try:
        pruned, edit, _ = proto.prune_to(model, ranked, cost)
    except RuntimeError:  # unreachable under the floors
        return None
    seed_step(seed, step + 1)  # the same seed as the removal it competes with
    proto.settle(pruned, iters=iters)
    return pruned, edit, proto.evaluate(pruned)


@dataclass
class TruncState:
    """Loop state of stage 2; also what a checkpoint stores (besides the model)."""

    model: nn.Module
    cur: dict  # metrics of ``model``
    rows: list[dict]
    edits: list[dict]
    replaced: list[str]
    step: int
    visited: int = 0  # candidates tried so far, in divergence order
    rejections: int = 0
    stop: str = ""
    projected: dict = field(default_factory=dict)  # block -> projection (replace: projection)
    entry_val: float = math.nan  # val Acc@1 when stage 2 began: max_added_drop's reference
    trials: int = 0  # removals tried (skipped candidates not counted)
    trial_iters: int = 0  # iterations the trials spent, equal-MAC filter branches included

    def to_json(self) -> dict:
        keys = (
            "rows",
            "edits",
            "replaced",
            "step",
            "visited",
            "rejections",
            "projected",
            "entry_val",
            "trials",
            "trial_iters",
        )
        out = {k: getattr(self, k) for k in keys}
        out["cur"] = {k: v for k, v in self.cur.items() if k != "val_correct"}  # re-measured
        return out


def truncation_stage(
    proto: Protocol,
    state: TruncState,
    *,
    order: list[str],
    scores: dict[str, float],
    goal: float,
    dense: dict,
    truncate,
    seed: int,
    on_visit: Callable[[TruncState], None] | None = None,
    close_gap: bool = True,
    max_step: float | None = None,
) -> TruncState:
    """Try candidates in ascending divergence until the goal (of the target measure),
    ``max_trials`` trials, ``max_rejections`` consecutive rejections, or no candidate is left
    (docs/method.md §3);
    then, in target mode, filter steps close any remaining gap so that every method ends on
    the same cost, none removing more than ``max_step`` (the largest stage-1 step),
    each recovered.

    Target mode accepts a recovered removal by ``truncate.acceptance``: ``paper`` unless
    its paired val cost is significantly above ``block_tolerance`` or it takes stage 2's
    added drop past ``max_added_drop``; ``equal_macs`` unless it is significantly worse than
    filter pruning to the same cost from the same model (whose branch is then kept).

    A shape-preserving candidate is tried as identity; with ``truncate.replace ==
    "projection"`` a shape-changing one is tried as a 1x1 conv projection fitted on the
    current model's val activations (``fit_projections``), under the same acceptance rules.
    """
    p = proto.prune
    replace = _replace_mode(truncate.replace)
    tol, dense_val, unit = proto.measure.tolerance, dense["val_acc1"], proto.measure.plural
    timer = Timer()
    if math.isnan(state.entry_val):  # a fresh stage 2 (a resumed one keeps its entry value)
        state.entry_val = state.cur["val_acc1"]
    state.stop = "no candidate left"
    for i, name in enumerate(order):
        if i < state.visited:
            continue
        if state.cur["cost"] <= goal:
            state.stop = f"{proto.measure.noun} target met"
            break
        if "val_correct" not in state.cur:  # a resumed state: re-measure the per-image record
            state.cur = proto.evaluate(state.model)
        if state.rejections >= truncate.max_rejections:
            state.stop = f"{state.rejections} consecutive rejections"
            break
        if state.trials >= truncate.max_trials:
            state.stop = f"{state.trials} trials (truncate.max_trials)"
            break
        state.visited = i + 1
        kinds = _candidate_kinds(state.model, proto.spec, proto.example, replace)
        if name not in kinds:
            continue  # its stage is down to one live block
        trial = clone(state.model)
        projection = None
        if kinds[name] is None:
            trial.set_submodule(name, nn.Identity())
        else:
            batches = proto.data.calib_batches(p.calib_batches, proto.device)
            fits = fit_projections(state.model, {name: kinds[name]}, batches)
            module, projection = fits[name]
            trial.set_submodule(name, module)
        trial_cost = proto.cost(trial)
        if trial_cost < (1 - tol) * goal:
            print(f"[truncate_layers] skip {name}: would overshoot the target", flush=True)
            continue
        iters_before = proto.iterations
        seed_step(seed, state.step + 1)
        proto.settle(trial, iters=_trial_iters(proto, truncate))
        res = proto.evaluate(trial)
        verdict = _judge(proto, state, trial_cost, res, dense_val, truncate, seed, goal)
        state.trials += 1
        state.trial_iters += proto.iterations - iters_before
        state.step += 1
        what = name if projection is None else f"{name} (1x1 projection)"
        cost = state.cur["val_acc1"] - res["val_acc1"]
        note = (
            f"{'accepted' if verdict.accepted else 'rejected'} {what} "
            f"(D_b={scores[name]:.4f}, val cost {cost:+.2f} pp, {verdict.why})"
        )
        print(f"[truncate_layers] {note}", flush=True)
        stage_name = "truncation"
        if verdict.accepted:
            state.model, state.cur, state.rejections = trial, res, 0
            if projection is None:
                state.replaced.append(name)
                state.edits.append({"stage": "truncation", "step": state.step, "replaced": name})
            else:  # the edit carries the projection too: later stages keep only the edits
                state.projected[name] = projection
                state.edits.append(
                    {
                        "stage": "truncation",
                        "step": state.step,
                        "projected": name,
                        "projection": projection,
                    }
                )
        else:
            state.rejections += 1
            if verdict.branch is not None:  # equal_macs: the better filter branch is kept
                state.model, edit, state.cur = verdict.branch
                state.edits.append({"stage": "filter", "step": state.step, "removed": edit})
                stage_name = "filter"
                note += "; kept the equal-MAC filter branch"
        state.rows.append(
            dynamics_row(
                state.step, stage_name, state.cur, timer.lap(), dense_val, p.max_drop, note
            )
        )
        if on_visit is not None:
            on_visit(state)
    else:
        if state.cur["cost"] <= goal:
            state.stop = f"{proto.measure.noun} target met"
    state.rows[-1]["note"] = "; ".join(
        filter(None, [state.rows[-1]["note"], f"stage 2 stopped: {state.stop}"])
    )
    if state.cur["cost"] > goal and p.mode == "target" and close_gap:
        # Target mode: filter steps on the same score close the gap (docs/method.md §3), in
        # as many equal steps as keep each within the largest stage-1 step.
        start = state.cur["cost"]
        gap = start - goal
        n = 1 if not max_step else max(1, math.ceil(gap / max_step - 1e-9))
        for j in range(1, n + 1):
            seed_step(seed, state.step + 1)
            goal_j = goal if j == n else start - gap * j / n
            # every gap step lands within the tolerance of its own goal, so none removes
            # more than its share of the gap (+ the tolerance): no step beyond stage 1's
            state.model, edit, cost = proto.prune_step(state.model, goal_j, refine=True)
            if not edit:  # no unit selection lands under the goal; the model is within above
                state.rows[-1]["note"] += (
                    f"; gap-closing step {j}/{n} not taken: no selection of units lands within "
                    f"the tolerance under the goal, and -{100 * (1 - cost / dense['cost']):.2f}% "
                    f"{unit} is within it above"
                )
                break
            state.cur = proto.evaluate(state.model)
            state.step += 1
            reached = 1 - cost / dense["cost"]
            state.rows.append(
                dynamics_row(
                    state.step,
                    "filter",
                    state.cur,
                    timer.lap(),
                    dense_val,
                    p.max_drop,
                    note=f"gap-closing step {j}/{n}: reached -{100 * reached:.1f}% {unit}",
                )
            )
            state.edits.append({"stage": "filter", "step": state.step, "removed": edit})
    return state


def rank_blocks(
    proto: Protocol, model: nn.Module, replace: str = "identity"
) -> tuple[list[str], dict[str, float]]:
    """Candidates in ascending block divergence D_b, measured on val.

    With ``replace="projection"`` a shape-changing candidate's D_b compares its output with
    its fitted projection P(T_in) instead of T_in (the relative error of the module that
    would replace it), and all candidates are ranked together.
    """
    kinds = _candidate_kinds(model, proto.spec, proto.example, replace)
    batches = proto.data.calib_batches(proto.prune.calib_batches, proto.device)
    identity = {n: model.get_submodule(n) for n, s in kinds.items() if s is None}
    scores = block_divergence(model, batches, identity)
    if strides := {n: s for n, s in kinds.items() if s is not None}:
        fits = fit_projections(model, strides, batches)
        scores.update(projection_divergence(model, batches, {n: f[0] for n, f in fits.items()}))
    order = sorted(scores, key=scores.get)
    print(
        "[truncate_layers] candidates by divergence: "
        + ", ".join(f"{n}={scores[n]:.3f}" for n in order),
        flush=True,
    )
    return order, scores


def largest_filter_step(rows: list[dict]) -> float | None:
    """The most of the target measure one filter step of the log removed (None: no filter
    step yet)."""
    steps = [
        prev["cost"] - row["cost"]
        for prev, row in zip(rows, rows[1:], strict=False)
        if row["stage"] == "filter"
    ]
    return max(steps) if steps else None


def stage(state: RunState, ctx: RunContext) -> RunState:
    """Stage 2 on ``state``: as the last compression stage it reaches the whole target (gap-
    closing filter steps finish what truncation leaves, for methods that close the gap);
    before filter pruning it takes the ``1 - stage1_share`` part. Resumes from the stage's
    checkpoint when the context provides one."""
    proto, p, t = ctx.proto, ctx.settings.prune, ctx.settings.truncate
    if not ctx.truncatable:  # filter pruning took (or takes) the whole target
        state.notes["truncation_stop"] = "the architecture has no block types to truncate"
        state.notes["truncation_trials"] = state.notes["truncation_iters"] = 0
        return state
    last = ctx.is_last("truncate_layers")
    reduction = ctx.target if last else (1 - p.stage1_share) * ctx.target
    order, scores = rank_blocks(proto, state.model, t.replace)
    ts = TruncState(
        state.model,
        proto.evaluate(state.model),
        state.rows,
        state.edits,
        state.replaced,
        state.rows[-1]["step"],
        projected=state.projected,
    )
    ckpt = ctx.checkpoint("truncate_layers")
    elapsed, t0 = 0.0, time.perf_counter()
    if ckpt is not None and (resumed := ckpt.load()) is not None:
        model, st = resumed
        elapsed = st.pop("elapsed_s")
        st.pop("key", None)  # the checkpoint's own input hash, not loop state
        proto.stream.position = st.pop("stream_position")
        proto.iterations = st.pop("iterations")
        ts = TruncState(model.to(proto.device), **st)
        print(f"[truncate_layers] resuming after {ts.visited} candidate(s)", flush=True)

    def save(s: TruncState) -> None:
        loop = {**s.to_json(), "elapsed_s": elapsed + time.perf_counter() - t0}
        loop["stream_position"], loop["iterations"] = proto.stream.position, proto.iterations
        ckpt.save(
            s.model, {"edits": s.edits, "replaced": s.replaced, "projected": s.projected}, loop
        )

    ts = truncation_stage(
        proto,
        ts,
        order=order,
        scores=scores,
        goal=(1 - reduction) * state.dense["cost"],
        dense=state.dense,
        truncate=t,
        seed=ctx.seed,
        on_visit=save if ckpt is not None else None,
        close_gap=last and ctx.method.close_gap,
        max_step=largest_filter_step(state.rows),
    )
    state.model, state.rows, state.edits = ts.model, ts.rows, ts.edits
    state.replaced, state.projected = ts.replaced, ts.projected
    state.notes["truncation_stop"] = ts.stop
    state.notes["truncation_trials"] = ts.trials
    state.notes["truncation_iters"] = ts.trial_iters
    state.wall_s["truncate_layers"] = state.wall_s.get("truncate_layers", 0.0) + elapsed
    return state
