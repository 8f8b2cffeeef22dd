"""The orchestrator: the one place that knows the order of a method's stages.

``idap.compress`` runs every stage of a method in memory; each CLI stage command and each
workflow job runs one of them between loading and saving an artifact
(:mod:`idap.stages.jobs`). Both go through :func:`run_stages`, so the order, the share of
the target each stage takes, the landing check and the final fine-tune are decided
here and nowhere else.

A stage is a function ``stage(state, ctx) -> state`` over in-memory :class:`RunState`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from torch import nn

from idap.engine.methods import Method, get_method, one_shot
from idap.engine.protocol import Protocol, check_landing, dynamics_row, make_criterion
from idap.stages import budget
from idap.stages.checkpoint import StepCheckpoint, seed_step
from idap.stages.registry import COMPRESSION_STAGES, FINAL_STAGE
from idap.stages.state import RunContext, RunState

# Each stage reseeds at its start with this plus its fixed seed id, so it draws the same
# random numbers in a fresh process (a workflow job) as after the previous stage in memory
# (the API). Stage modules are imported when a stage runs (idap.stages.registry): a job's
# code is its own stage's, which is what its code hash covers.
_STAGE_SEED_BASE = 1_000_001


def plan(method: Method) -> tuple[str, ...]:
    """Every stage a method runs, in order: its compression stages, then the fine-tune."""
    return (*method.stages, FINAL_STAGE)


def start(model: nn.Module, proto: Protocol) -> RunState:
    """The state before the first stage: the dense model, evaluated once."""
    dense = proto.evaluate(model)
    if proto.teacher is not None:  # a timed measure is relative to the teacher: 1.0 exactly
        dense["cost"] = proto.cost(proto.teacher)
    row = dynamics_row(0, "baseline", dense, 0.0, dense["val_acc1"], proto.prune.max_drop)
    return RunState(model, dense_metrics(dense), [row])


def dense_metrics(dense: dict) -> dict:
    """What the stages keep of the dense model's evaluation: its MACs, its target measure
    (``cost``, re-measured by every job for a timed measure) and its val Acc@1."""
    return {k: dense[k] for k in ("macs", "cost", "val_acc1")}


def run_stages(state: RunState, ctx: RunContext, stages: tuple[str, ...] | None = None) -> RunState:
    """Run ``stages`` (default: the whole plan) on ``state``, in the method's order.

    After the method's last compression stage, in target mode, a method that closes the gap
    must have landed within its tolerance of its target (``prune.target_kind``).

    Raises:
        ValueError: a stage the method does not run.
        RuntimeError: the method missed its target.
    """
    full = (*ctx.stages, FINAL_STAGE)
    stages = full if stages is None else tuple(stages)
    unknown = [s for s in stages if s not in full]
    if unknown:
        raise ValueError(
            f"method {ctx.method.name} runs {', '.join(full)}; it has no stage {unknown[0]}"
        )
    for name in sorted(stages, key=full.index):
        if not state.stages_done and name in ctx.stages:
            check_reachable(state, ctx)
        stage = COMPRESSION_STAGES[name]
        seed_step(ctx.seed, _STAGE_SEED_BASE + stage.seed_id)
        ctx.proto.stream.position, ctx.proto.iterations = state.stream_position, state.iterations
        t0 = time.perf_counter()
        state = stage.function()(state, ctx)
        state.wall_s[name] = state.wall_s.get(name, 0.0) + time.perf_counter() - t0
        state.stream_position, state.iterations = ctx.proto.stream.position, ctx.proto.iterations
        state.stages_done.append(name)
        if name in ctx.stages and ctx.is_last(name):
            check_target(state, ctx)
    return state


def check_reachable(state: RunState, ctx: RunContext) -> None:
    """Refuse, before the first step, a target filter pruning cannot reach under the
    per-layer floors (target mode, methods that end on their target).

    Raises:
        ValueError: naming the method, the target and the least reachable.
    """
    p, measure = ctx.settings.prune, ctx.proto.measure
    if p.mode != "target" or not ctx.method.close_gap or "prune_filters" not in ctx.stages:
        return
    dense = state.dense["cost"]
    goal = (1 - ctx.target) * dense
    try:
        floor = ctx.proto.floor_cost(state.model)
    except ValueError as e:  # e.g. a criterion with nothing to score in this model
        raise ValueError(f"{ctx.method.name} refused before step 1: {e}") from None
    if floor > (1 + measure.tolerance) * goal:
        raise ValueError(
            f"{ctx.method.name} cannot reach a -{100 * ctx.target:.1f}% {measure.noun} target: "
            f"every channel above the per-layer floors removed leaves "
            f"-{100 * (1 - floor / dense):.1f}% ({measure.fmt(floor)} > {measure.fmt(goal)}); "
            f"refused before step 1 (lower the target, prune.min_keep or "
            f"prune.min_keep_fraction)"
        )


def check_target(state: RunState, ctx: RunContext) -> None:
    p = ctx.settings.prune
    if p.mode == "target" and ctx.method.close_gap:
        cost = ctx.proto.measure.final(state.model)
        state.notes["target_reached"] = 1 - cost / state.dense["cost"]
        check_landing(ctx.method.name, cost, state.dense["cost"], ctx.target, ctx.proto.measure)


def compress(
    model: nn.Module, make_ctx: Callable[[float, object], RunContext], target: float, settings
) -> tuple[RunState, RunContext]:
    """Every stage of one method on ``model`` (the dense model, left untouched), in memory.

    In ``target`` and ``rollback`` mode: one run at ``target``. In ``budget`` mode:
    ``target`` is an upper bound and the result is the largest reduction whose final model
    stays within ``prune.max_drop`` (:mod:`idap.stages.budget`); every probe's final model
    is a dynamics row of stage ``probe`` after the accepted run's rows, and the record notes
    say where the search stopped. No passing probe: the dense model is the result. Each of
    ``prune.budget_deltas`` gets its own search over the same probes (run once each); their
    answers are in the notes (``budget_by_delta``), the model is ``max_drop``'s.

    ``make_ctx(target, settings)`` builds the context of one run.
    """
    p = settings.prune
    if p.mode != "budget":
        ctx = make_ctx(target, settings)
        return run_stages(start(copy.deepcopy(model), ctx.proto), ctx), ctx
    inner = settings.replace(prune={"mode": "target"})
    contexts: dict[float, RunContext] = {}

    first = make_ctx(target, inner)
    dense = start(copy.deepcopy(model), first.proto)  # evaluated once, not once per probe

    def run_at(r: float) -> RunState:
        contexts[r] = make_ctx(r, inner)
        fresh = RunState(copy.deepcopy(model), dict(dense.dense), [dict(dense.rows[0])])
        return run_stages(fresh, contexts[r])

    run_at = budget.Cached(run_at)
    unit = first.proto.measure.plural
    answers = {}
    for delta in sorted({p.max_drop, *p.budget_deltas}, key=lambda d: d != p.max_drop):
        answers[delta] = budget.search(
            run_at,
            target,
            delta,
            dense.dense,
            p.budget_probes,
            p.budget_start,
            p.budget_resolution,
            unit=unit,
        )
    best, tried, stop = answers[p.max_drop]
    passed = [t.target for t in tried if t.passed]
    if best is None:
        state, ctx = dense, first
        stop += "; no probe stayed within max_drop: the dense model is the result"
    else:
        state, ctx = best, contexts[max(passed)]
    runs = run_at.union([tr for _b, tr, _s in answers.values()], p.max_drop)
    state.rows += budget.probe_rows(runs, p.max_drop, state.rows[-1]["step"] + 1, unit)
    state.notes.update(
        mode="budget",
        budget_stop=stop,
        budget_upper=target,
        budget_max_drop=p.max_drop,
        budget_probes=len(runs),
        budget_target=max(passed) if passed else 0.0,
        budget_iterations=sum(t.iterations for t in runs),
        budget_wall_s=sum(t.wall_s for t in runs),
    )
    if p.budget_deltas:
        state.notes["budget_by_delta"] = {
            f"{d:g}": budget.answer(tr, st, dense.dense) for d, (_b, tr, st) in answers.items()
        }
    return state, ctx


def summary(state: RunState, ctx: RunContext) -> dict:
    """The run's record as the API returns it and the artifact stores it."""
    return {
        "method": ctx.method.name,
        "target": ctx.target,
        "mode": ctx.settings.prune.mode,
        "target_kind": ctx.proto.measure.kind,
        "stages": list(state.stages_done),
        "rows": state.rows,
        "edits": state.edits,
        "replaced": state.replaced,
        "projected": state.projected,
        "dense": dict(state.dense),
        "wall_s": dict(state.wall_s),
        "iterations": state.iterations,
        "budget": ctx.budget(),
        "stream_position": state.stream_position,
        "images_seen": ctx.proto.stream.distinct_images(state.stream_position),
        **state.notes,
    }


def make_context(
    method: str,
    target: float,
    settings,
    data,
    device,
    spec,
    num_classes: int,
    in_chans: int,
    teacher: nn.Module | None,
    *,
    initial_widths: dict[str, int] | None = None,
    checkpoint: Callable[[str], StepCheckpoint | None] | None = None,
) -> RunContext:
    """The context of one run. A one-shot method (VBP) gets one step whose recovery has the
    iterations the step-wise protocol spends over all its steps: the same training budget.

    Raises:
        KeyError: an unregistered method (the message lists the valid ones).
        ValueError: a target outside (0, 1), or a target kind the method cannot prune to.
    """
    if not 0 < target < 1:
        raise ValueError(f"target must be a reduction in (0, 1), got {target}")
    m = get_method(method)
    if m.sparse and settings.prune.target_kind != "macs":
        raise ValueError(
            f"{method} is unstructured: it prunes to a MAC sparsity, not to a "
            f"prune.target_kind {settings.prune.target_kind!r} target (use macs)"
        )
    if m.one_shot:
        settings = settings.replace(prune=one_shot(settings.prune))
    proto = Protocol(
        data,
        device,
        spec,
        num_classes,
        in_chans,
        settings.prune,
        None if m.sparse else make_criterion(m, settings.prune),
        initial_widths=initial_widths,
        teacher=teacher,
    )
    pr, f = settings.prune, settings.finetune
    proto.budget = pr.steps * pr.recovery_iters + f.epochs * proto.stream.per_epoch
    return RunContext(
        m,
        target,
        settings,
        proto,
        teacher,
        m.stages,
        bool(spec.block_types),
        checkpoint or (lambda stage: None),
    )
