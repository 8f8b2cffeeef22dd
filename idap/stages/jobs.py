"""The artifact adapter around the orchestrator: load a stage's inputs, run that one stage
through :func:`idap.stages.pipeline.run_stages`, save its outputs.

This is what a workflow job and an ``idap <stage>`` command run. A compression run's state
travels between jobs as the model artifact (its record carries the edits, the dense
reference and the stop reasons) plus the dynamics CSV.
"""

from __future__ import annotations

import copy

from idap.core.runtime import setup_runtime
from idap.data import check_model_fits, dataset_info, load_data
from idap.engine.protocol import read_dynamics, widths, write_dynamics
from idap.models import get_spec
from idap.models.artifact import load_model, read_record, save_model
from idap.stages.checkpoint import StepCheckpoint
from idap.stages.pipeline import FINAL_STAGE, compress, make_context, run_stages, start, summary
from idap.stages.state import RunState

# Record fields that rebuild the architecture; every artifact of a run carries them.
_BASE = ("arch", "num_classes", "in_chans", "input_size", "dataset")
# Free-form notes a stage leaves in the state; kept at the top level of the record.
_NOTES = (
    "stage1_stop",
    "truncation_stop",
    "truncation_trials",
    "truncation_iters",
    "acc1_before_finetune",
    "val_acc1_before_finetune",
    "finetune_iterations",
    "sparsity",
    "target_reached",
)


def state_from_record(model, rec: dict, rows: list[dict], dense_cost: float) -> RunState:
    """The in-memory state a previous stage's artifact and dynamics describe; the dense
    model's target measure is this job's (a timing is taken on the machine that prunes)."""
    return RunState(
        model,
        {"macs": rec["dense_macs"], "cost": dense_cost, "val_acc1": rec["dense_val_acc1"]},
        rows,
        edits=list(rec.get("edits", [])),
        replaced=list(rec.get("replaced", [])),
        projected=dict(rec.get("projected", {})),
        wall_s=dict(rec.get("wall_s", {})),
        notes={k: rec[k] for k in _NOTES if k in rec},
        stages_done=list(rec.get("stages", [])),
        stream_position=int(rec.get("stream_position", 0)),
        iterations=int(rec.get("iterations", 0)),
    )


def run_stage(
    stage: str,
    *,
    model: str,
    dense: str,
    out_model: str,
    out_dynamics: str,
    dataset: str,
    method: str,
    target: float | None,
    settings,
    dynamics_in: str | None = None,
    threads: int | None = None,
) -> dict:
    """Run one stage of ``method`` on the artifact ``model`` and save the result.

    Args:
        stage: ``prune_filters``, ``truncate_layers``, ``sparsify`` or ``finetune``.
        model: the stage's input artifact: the dense model for the method's first stage,
            else the previous stage's output.
        dense: the dense model (the reference of every target and drop; the teacher).
        target: the reduction of ``prune.target_kind`` (MACs by default; a parameter
            sparsity for an unstructured method) in (0, 1); None: the one in the input record.
        dynamics_in: the previous stage's dynamics CSV (None for the first stage).
        settings: :class:`idap.core.settings.Settings` as the job's model sees them.

    Returns:
        The saved model's record.

    Raises:
        ValueError: a stage the method does not run, a model that does not fit the data, a
            later stage without the previous stage's dynamics.
        RuntimeError: the method missed its target (nothing is written).
    """
    dev, spec, data = _open(settings, threads, model, dataset)
    net, rec = load_model(model)
    check_model_fits(rec, data, model)
    if target is None:
        if "target" not in rec:
            raise ValueError(f"{model} records no target; give one")
        target = rec["target"]
    teacher = copy.deepcopy(net) if model == dense else _teacher(dense, data)[0]
    net.to(dev)
    teacher.to(dev).eval()
    info = dataset_info(dataset)
    base = {k: rec[k] for k in _BASE if k in rec}
    key = {
        "stage": stage,
        "input": rec["weights_sha256"],
        "method": method,
        "target": target,
        "settings": settings.to_dict(),
    }

    def checkpoint(name: str) -> StepCheckpoint | None:
        return StepCheckpoint(out_model, key, base) if name == stage else None

    ctx = make_context(
        method,
        target,
        settings,
        data,
        dev,
        spec,
        info.num_classes,
        info.in_chans,
        teacher,
        initial_widths=widths(teacher, set(spec.classifier)),
        checkpoint=checkpoint,
    )
    if "dense_macs" in rec:
        if dynamics_in is None:
            raise ValueError(f"{stage} after another stage needs that stage's dynamics")
        rows = read_dynamics(dynamics_in)
        state = state_from_record(net, rec, rows, ctx.proto.cost(teacher))
    else:
        state = start(net, ctx.proto)
    state = run_stages(state, ctx, (stage,))
    record = _save(state, ctx, base, stage, out_model, out_dynamics)
    if (ckpt := checkpoint(stage)) is not None:
        ckpt.clear()
    return record


def run_search(
    *,
    dense: str,
    out_model: str,
    out_dynamics: str,
    dataset: str,
    method: str,
    target: float,
    settings,
    threads: int | None = None,
) -> dict:
    """Budget mode's search (:func:`idap.stages.pipeline.compress`) on the dense artifact
    ``dense`` up to ``target``, in one job; saves the accepted run's final model and its
    dynamics (the probes' rows after it) as the method's final (``finetune``) outputs.

    Returns:
        The saved model's record.
    """
    if settings.prune.mode != "budget":
        raise ValueError(f"run_search is budget mode's; prune.mode is {settings.prune.mode!r}")
    dev, spec, data = _open(settings, threads, dense, dataset)
    teacher, rec = _teacher(dense, data)
    teacher.to(dev).eval()
    info = dataset_info(dataset)
    initial = widths(teacher, set(spec.classifier))

    def make_ctx(r: float, s):
        return make_context(
            method, r, s, data, dev, spec, info.num_classes, info.in_chans, teacher,
            initial_widths=initial,
        )  # fmt: skip

    state, ctx = compress(teacher, make_ctx, target, settings)
    base = {k: rec[k] for k in _BASE if k in rec}
    return _save(state, ctx, base, FINAL_STAGE, out_model, out_dynamics)


def _open(settings, threads: int | None, artifact: str, dataset: str):
    """What every compression job starts from: the runtime (seed, device, threads,
    precision), the architecture of ``artifact`` and the dataset at its input size."""
    dev = setup_runtime(
        settings.seed, settings.device, threads, settings.precision, settings.channels_last
    )
    spec = get_spec(read_record(artifact)["arch"])
    return dev, spec, load_data(dataset, settings.data, settings.seed, spec.input_size)


def _teacher(dense: str, data) -> tuple:
    """The dense model (every run's reference and teacher) and its record, checked against
    the data."""
    teacher, rec = load_model(dense)
    check_model_fits(rec, data, dense)
    return teacher, rec


def _save(state: RunState, ctx, base: dict, stage: str, out_model: str, out_dynamics: str):
    fields = summary(state, ctx)
    dense = fields.pop("dense")
    del fields["rows"]  # the dynamics travel in their own CSV
    record = {
        **base,
        "stage": stage,
        **fields,
        "dense_macs": dense["macs"],
        "dense_val_acc1": dense["val_acc1"],
    }
    save_model(state.model.cpu(), out_model, record)
    write_dynamics(out_dynamics, state.rows)
    return record
