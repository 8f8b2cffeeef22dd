"""Stage `finetune`: the final fine-tune, distilling from the dense model (docs/method.md §4)."""

from __future__ import annotations

import contextlib

from idap.engine.protocol import Timer, dynamics_row
from idap.engine.sparse import Masks
from idap.engine.train import distill_finetune
from idap.stages.state import RunContext, RunState


def stage(state: RunState, ctx: RunContext) -> RunState:
    """KD fine-tune of the compressed model from the dense teacher for what is left of the
    run's training budget (``ctx.budget()`` minus the recoveries' iterations), on the next
    batches of the run's stream; the accuracy before it is kept. A method without a
    fine-tune (the ``idap_noft`` ablation) only evaluates. In a job, its state is saved
    every ``finetune.checkpoint_every`` epochs of the stream and a rerun resumes from it."""
    proto, f = ctx.proto, ctx.settings.finetune
    budget = ctx.budget()
    steps = max(budget - proto.iterations, 0) if ctx.method.finetune and f.epochs > 0 else 0
    timer = Timer()
    before = proto.evaluate(state.model)
    if steps > 0:
        if ctx.teacher is None:
            raise ValueError("the final fine-tune needs the dense model as its teacher")
        ckpt = ctx.checkpoint("finetune")
        saved = ckpt.training("finetune", f.checkpoint_every) if ckpt is not None else None
        resume = saved.load() if saved is not None else None
        if resume is not None:
            proto.stream.position += resume["done"]
        # an unstructured model keeps its zeros: the mask its sparsify stage left is held
        held = Masks.from_zeros(state.model).hold() if ctx.method.sparse else None
        with held or contextlib.nullcontext():
            distill_finetune(
                state.model,
                ctx.teacher,
                proto.stream,
                steps,
                f.optimizer,
                f.lr,
                f.momentum,
                f.weight_decay,
                f.kd_beta,
                f.kd_temperature,
                proto.device,
                desc="finetune",
                chunk=proto.stream.per_epoch,
                seed=ctx.seed,
                resume=resume,
                save=saved.save if saved is not None else None,
            )
    after = proto.evaluate(state.model)
    state.rows.append(
        dynamics_row(
            state.rows[-1]["step"] + 1,
            "final",
            after,
            timer.lap(),
            state.dense["val_acc1"],
            ctx.settings.prune.max_drop,
            note=f"KD fine-tune: {steps} iterations ({proto.iterations} of the budget of "
            f"{budget} went to recoveries); test Acc@1 before {before['test_acc1']:.2f}",
        )
    )
    proto.iterations += steps
    state.notes.update(
        acc1_before_finetune=before["test_acc1"],
        val_acc1_before_finetune=before["val_acc1"],
        finetune_iterations=steps,
    )
    return state
