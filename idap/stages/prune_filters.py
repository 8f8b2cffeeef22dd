"""Stage `prune_filters`: IDAP++ stage 1, iterative filter pruning (docs/method.md §2).

Peers (other criteria) run through exactly this loop: same schedule, floor, target
search, BN recalibration and recovery budget; only the ranking differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from idap.engine.protocol import Protocol, Timer, dynamics_row
from idap.engine.schedule import code_fraction, cumulative_target
from idap.stages.checkpoint import seed_step
from idap.stages.state import RunContext, RunState

MAX_RETRIES = 2  # rollback mode: halve a failing step's increment at most this often


@dataclass
class FilterState:
    """Loop state of stage 1; also what a checkpoint stores."""

    model: nn.Module
    rows: list[dict]
    edits: list[dict]
    step: int = 0  # last finished step
    reduction: float = 0.0  # cumulative reduction of the target measure so far (fraction)
    stop: str = ""
    offset: int = 0  # step number of the row this stage continues from


def filter_stage(
    proto: Protocol,
    state: FilterState,
    *,
    target: float,
    share: float,
    seed: int,
    dense: dict,
    on_step: Callable[[FilterState], None] | None = None,
) -> FilterState:
    """Run (or continue) stage 1 from ``state`` to the stage-1 target ``share · target``.

    ``prune['mode']`` is ``rollback`` (roll back a step whose val drop exceeds ``max_drop``,
    halve its increment, retry at most twice, else stop there) or anything else (reach the
    target; steps whose val drop exceeds ``max_drop`` are flagged; budget mode's probes
    are target-mode runs). Targets are reductions of ``proto.measure`` (MACs by default).
    ``prune['schedule']`` is ``paper`` (cumulative targets, front-loaded) or ``code``
    (remove the fraction p0·(1 + k/K)^α of the remaining units, the authors' script).
    """
    p = proto.prune
    K, cost0, dense_val = p.steps, dense["cost"], dense["val_acc1"]
    unit = proto.measure.plural
    goal = share * target
    timer = Timer()
    for k in range(state.step + 1, K + 1):
        if state.reduction >= goal - 1e-9:
            state.stop = f"stage-1 goal -{100 * goal:.1f}% {unit} reached at step {state.step}"
            break
        seed_step(seed, state.offset + k)
        frac = None
        if p.schedule == "paper":
            r_k = cumulative_target(k, K, target, share, p.alpha)
            if r_k <= state.reduction and k < K:
                continue  # an earlier stage already removed this much
        else:  # fraction of remaining units, floored at the stage goal
            r_k, frac = goal, code_fraction(k, K, p.code_p0, p.alpha)
        increment, retries = r_k - state.reduction, 0
        while True:
            r_try = state.reduction + increment
            model, edit, cost = proto.prune_step(
                state.model, (1 - r_try) * cost0, frac, refine=k == K, goal=(1 - goal) * cost0
            )
            cur = proto.evaluate(model)
            drop = dense_val - cur["val_acc1"]
            if p.mode != "rollback" or drop <= p.max_drop:
                break
            retries += 1
            if retries > MAX_RETRIES:
                state.stop = (
                    f"rollback: step {k} dropped val Acc@1 by {drop:.2f} pp > "
                    f"{p.max_drop} pp after {MAX_RETRIES} halvings; stopped at "
                    f"-{100 * state.reduction:.1f}% {unit}"
                )
                print(f"[prune_filters] {state.stop}", flush=True)
                return state
            increment /= 2
            frac = frac / 2 if frac is not None else None
            print(
                f"[prune_filters] step {k}: drop {drop:.2f} pp, rolled back, retrying "
                f"with half the increment",
                flush=True,
            )
        reached = 1 - cost / cost0
        note = (
            f"target -{100 * r_try:.1f}% {unit}"
            if frac is None
            else f"remove {100 * frac:.1f}% of units"
        ) + f", reached -{100 * reached:.1f}%"
        if retries:
            note += f" (after {retries} rollback(s))"
        if not edit:
            note += " (nothing removed: no selection of units lands under it, and the model "
            note += "already lies within the tolerance above it)"
        state.rows.append(
            dynamics_row(
                state.offset + k, "filter", cur, timer.lap(), dense_val, p.max_drop, note=note
            )
        )
        state.edits.append({"stage": "filter", "step": state.offset + k, "removed": edit})
        state.model, state.step, state.reduction = model, k, reached
        print(f"[prune_filters] step {k}/{K}: {note}, val Acc@1 {cur['val_acc1']:.2f}", flush=True)
        if on_step is not None and k < K:
            on_step(state)
    state.stop = state.stop or f"{K} steps done"
    return state


def stage(state: RunState, ctx: RunContext) -> RunState:
    """Stage 1 on ``state``: as the first stage it takes ``stage1_share`` of the target when
    truncation follows (else all of it); after truncation it takes the model the rest of the
    way. Resumes from the stage's checkpoint when the context provides one."""
    proto = ctx.proto
    share = ctx.stage1_share() if ctx.is_first("prune_filters") else 1.0
    fs = FilterState(
        state.model,
        state.rows,
        state.edits,
        offset=state.rows[-1]["step"],
        reduction=1 - proto.cost(state.model) / state.dense["cost"],
    )
    ckpt = ctx.checkpoint("prune_filters")
    elapsed, t0 = 0.0, time.perf_counter()
    if ckpt is not None and (resumed := ckpt.load()) is not None:
        model, st = resumed
        fs = FilterState(
            model.to(proto.device),
            st["rows"],
            st["edits"],
            st["step"],
            st["reduction"],
            offset=fs.offset,
        )
        elapsed = st["elapsed_s"]
        proto.stream.position, proto.iterations = st["stream_position"], st["iterations"]
        print(f"[prune_filters] resuming after step {st['step']} from {ckpt.dir}", flush=True)

    def save(s: FilterState) -> None:
        loop = {"step": s.step, "rows": s.rows, "edits": s.edits, "reduction": s.reduction}
        loop["elapsed_s"] = elapsed + time.perf_counter() - t0
        loop["stream_position"], loop["iterations"] = proto.stream.position, proto.iterations
        edits = {"edits": s.edits, "replaced": state.replaced, "projected": state.projected}
        ckpt.save(s.model, edits, loop)

    fs = filter_stage(
        proto,
        fs,
        target=ctx.target,
        share=share,
        seed=ctx.seed,
        dense=state.dense,
        on_step=save if ckpt is not None else None,
    )
    fs.rows[-1]["note"] = "; ".join(
        filter(None, [fs.rows[-1]["note"], f"stage 1 stopped: {fs.stop}"])
    )
    state.model, state.rows, state.edits = fs.model, fs.rows, fs.edits
    state.notes["stage1_stop"] = fs.stop
    state.wall_s["prune_filters"] = state.wall_s.get("prune_filters", 0.0) + elapsed
    return state
