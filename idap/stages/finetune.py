"""Stage `finetune`: the final fine-tune, distilling from the dense model (docs/method.md §4)."""

from __future__ import annotations

from idap.engine.protocol import Timer, dynamics_row
from idap.engine.train import distill_finetune
from idap.stages.state import RunContext, RunState


def stage(state: RunState, ctx: RunContext) -> RunState:
    """KD fine-tune of the compressed model from the dense teacher; the accuracy before it is
    kept. A method without a fine-tune (the ``idap_noft`` ablation) only evaluates."""
    proto, f = ctx.proto, ctx.settings.finetune
    epochs = f.epochs if ctx.method.finetune else 0
    timer = Timer()
    before = proto.evaluate(state.model)
    if epochs > 0:
        if ctx.teacher is None:
            raise ValueError("the final fine-tune needs the dense model as its teacher")
        distill_finetune(
            state.model,
            ctx.teacher,
            proto.data.train_loader(),
            epochs,
            f.optimizer,
            f.lr,
            f.momentum,
            f.weight_decay,
            f.kd_beta,
            f.kd_temperature,
            proto.device,
            desc="finetune",
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
            note=f"{epochs} epoch(s) KD fine-tune; test Acc@1 before {before['test_acc1']:.2f}",
        )
    )
    state.notes.update(
        acc1_before_finetune=before["test_acc1"], val_acc1_before_finetune=before["val_acc1"]
    )
    return state
