"""Stage `sparsify`: unstructured and dynamic-sparse methods (docs/method.md §6).

The structured protocol's loop with masks instead of channel removal: K steps, each a mask
update by the method's rule (:mod:`idap.engine.sparse`) and the same BN recalibration and
recovery (distilling from the dense model, on the run's one stream, within the run's
budget); the final fine-tune then trains with the mask held. The target is the parameter
sparsity the run ends at, exactly.
"""

from __future__ import annotations

from idap.engine.protocol import Timer, dynamics_row
from idap.engine.sparse import count_weights, create_rule, dense_gradient
from idap.stages.checkpoint import seed_step
from idap.stages.state import RunContext, RunState


def stage(state: RunState, ctx: RunContext) -> RunState:
    """Take the dense model to ``ctx.target`` parameter sparsity in ``prune.steps`` steps.

    Raises:
        RuntimeError: the rule ended away from the target (a bug, not a setting).
    """
    proto, p = ctx.proto, ctx.settings.prune
    model = state.model

    def gradient():
        return dense_gradient(model, next(proto.stream.take(1)), proto.device)

    rule = create_rule(ctx.method.criterion, model, ctx.target, ctx.settings, gradient)
    offset, dense_val = state.rows[-1]["step"], state.dense["val_acc1"]
    timer = Timer()
    rule.start()
    with rule.masks.hold():
        for k in range(1, p.steps + 1):
            seed_step(ctx.seed, offset + k)
            note = "" if rule.trains_first else rule.update(k)
            for i, n in enumerate(rule.training_splits(k, p.recovery_iters)):
                proto.settle(model, n, recalibrate=i == 0)
                rule.after_training(k, i)
            if rule.trains_first:
                note = rule.update(k)
            if k == p.steps:
                rule.finish()  # e.g. PDP's mask made hard: the last row is the sparse model
            cur = proto.evaluate(model)
            note += f"; sparsity {100 * rule.masks.sparsity():.2f}%"
            state.rows.append(
                dynamics_row(offset + k, "sparse", cur, timer.lap(), dense_val, p.max_drop, note)
            )
            print(f"[sparsify] step {k}/{p.steps}: {note}, val Acc@1 {cur['val_acc1']:.2f}")
    kept, total = count_weights(model)
    reached = 1 - rule.masks.kept() / total
    if abs(reached - ctx.target) > 1.0 / total + 1e-9:
        raise RuntimeError(
            f"{ctx.method.name} ended at {100 * reached:.2f}% sparsity for a "
            f"{100 * ctx.target:.1f}% target"
        )
    state.notes["sparsity"] = 1 - kept / total
    return state
