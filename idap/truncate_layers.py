"""Stage `truncate_layers`: IDAP++ stage 2, flow-guided layer truncation (METHOD §3).

Blocks whose input and output shapes are equal are replaced by identity, least-changing
(lowest block divergence) first, each tried removal recovered and accepted or reverted on
val. In target mode a final filter step closes any gap to the MAC target, so every method
ends on the same MACs.

Optional variant ``truncate.replace: projection`` (METHOD §3, beyond the paper): a
shape-changing block (e.g. a downsampling residual block) becomes a candidate too and is
replaced by a 1x1 conv (its stride, with bias) fitted by least squares on val activations,
followed by ReLU when the block's outputs are non-negative. Such a block's divergence is
measured against its fitted projection, D_b = E[||T_out - P(T_in)|| / ||T_out||], so all
candidates rank by the relative error of the module that would replace them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .artifact import load_model, read_record, recorded_projections, save_model
from .checkpoint import StepCheckpoint, seed_step
from .context import check_model_fits, load_data, setup_runtime
from .datasets import dataset_info
from .methods import get_method
from .models import ModelSpec, get_spec
from .projection import fit_projections, projection_divergence, projection_stride
from .protocol import (
    Protocol,
    Timer,
    check_landing,
    clone,
    dynamics_row,
    make_criterion,
    read_dynamics,
    write_dynamics,
)
from .scores import block_divergence

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

    def to_json(self) -> dict:
        keys = ("cur", "rows", "edits", "replaced", "step", "visited", "rejections", "projected")
        return {k: getattr(self, k) for k in keys}


def truncation_stage(
    proto: Protocol,
    state: TruncState,
    *,
    order: list[str],
    scores: dict[str, float],
    goal_macs: float,
    dense: dict,
    truncate: dict,
    seed: int,
    on_visit: Callable[[TruncState], None] | None = None,
    close_gap: bool = True,
) -> TruncState:
    """Try candidates in ascending divergence until the MAC goal, ``max_rejections``
    consecutive rejections, or no candidate is left (METHOD §3); then, in target mode, one
    filter step closes any remaining gap so that every method ends on the same MACs.

    A shape-preserving candidate is tried as identity; with ``truncate["replace"] ==
    "projection"`` a shape-changing one is tried as a 1x1 conv projection fitted on the
    current model's val activations (``fit_projections``), under the same acceptance rules.
    """
    p = proto.prune
    replace = _replace_mode(truncate.get("replace", "identity"))
    tol, dense_val = p["mac_tolerance"], dense["val_acc1"]
    timer = Timer()
    state.stop = "no candidate left"
    for i, name in enumerate(order):
        if i < state.visited:
            continue
        if state.cur["macs"] <= goal_macs:
            state.stop = "MAC target met"
            break
        if state.rejections >= truncate["max_rejections"]:
            state.stop = f"{state.rejections} consecutive rejections"
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
            batches = proto.data.calib_batches(p["calib_batches"], proto.device)
            fits = fit_projections(state.model, {name: kinds[name]}, batches)
            module, projection = fits[name]
            trial.set_submodule(name, module)
        if proto.macs(trial) < (1 - tol) * goal_macs:
            print(f"[truncate_layers] skip {name}: would overshoot the MAC target", flush=True)
            continue
        seed_step(seed, state.step + 1)
        proto.settle(trial, teacher=state.model, iters=truncate["recovery_iters"])
        res = proto.evaluate(trial)
        cost = state.cur["val_acc1"] - res["val_acc1"]
        if p["mode"] == "budget":  # the total drop vs the dense model stays within budget
            accepted = dense_val - res["val_acc1"] <= p["max_drop"]
        else:  # this block may cost at most block_tolerance relative to the model before it
            accepted = cost <= truncate["block_tolerance"]
        state.step += 1
        what = name if projection is None else f"{name} (1x1 projection)"
        note = (
            f"{'accepted' if accepted else 'rejected'} {what} "
            f"(D_b={scores[name]:.4f}, val cost {cost:+.2f} pp)"
        )
        print(f"[truncate_layers] {note}", flush=True)
        if accepted:
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
        state.rows.append(
            dynamics_row(
                state.step, "truncation", state.cur, timer.lap(), dense_val, p["max_drop"], note
            )
        )
        if on_visit is not None:
            on_visit(state)
    else:
        if state.cur["macs"] <= goal_macs:
            state.stop = "MAC target met"
    state.rows[-1]["note"] = "; ".join(
        filter(None, [state.rows[-1]["note"], f"stage 2 stopped: {state.stop}"])
    )
    if state.cur["macs"] > goal_macs and p["mode"] == "target" and close_gap:
        # Target mode: one more filter step on the same score closes the gap (METHOD §3).
        seed_step(seed, state.step + 1)
        state.model, edit, macs = proto.prune_step(state.model, goal_macs)
        state.cur = proto.evaluate(state.model)
        state.step += 1
        reached = 1 - macs / dense["macs"]
        state.rows.append(
            dynamics_row(
                state.step,
                "filter",
                state.cur,
                timer.lap(),
                dense_val,
                p["max_drop"],
                note=f"gap-closing step: reached -{100 * reached:.1f}% MACs",
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
    batches = proto.data.calib_batches(proto.prune["calib_batches"], proto.device)
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


def run(
    model_path: str,
    dynamics_in: str | None,
    out_model: str,
    out_dynamics: str,
    dataset: str,
    method: str,
    target: float,
    data: dict,
    prune: dict,
    truncate: dict,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
) -> dict:
    """Truncate blocks of the filter-pruned model toward the full MAC target ``target``.

    A killed run resumes after the last candidate it finished trying.
    """
    dev = setup_runtime(seed, device, threads)
    d = load_data(dataset, data, seed, read_record(model_path)["arch"])
    model, rec = load_model(model_path)
    check_model_fits(rec, d, model_path)
    model.to(dev)
    info = dataset_info(dataset)
    proto = Protocol(
        d,
        dev,
        get_spec(rec["arch"]),
        info.num_classes,
        info.in_chans,
        prune,
        make_criterion(get_method(method), prune),
    )
    m = get_method(method)
    t_stage = time.perf_counter()
    if "dense_macs" in rec:  # after filter pruning
        rows = read_dynamics(dynamics_in)
        dense = {"val_acc1": rec["dense_val_acc1"], "macs": rec["dense_macs"]}
    else:  # the first stage (reversed order, or stage 2 alone): the input is the dense model
        dense = proto.evaluate(model)
        rows = [dynamics_row(0, "baseline", dense, 0.0, dense["val_acc1"], prune["max_drop"])]
    last = m.stages[-1] == "truncate_layers"
    # as the last stage, reach the target; before filter pruning, take its (1 − share) part
    reduction = target if last else (1 - prune["stage1_share"]) * target
    order, scores = rank_blocks(proto, model, truncate.get("replace", "identity"))
    base = {k: v for k, v in rec.items() if k not in ("weights", "weights_sha256", "format")}
    ckpt = StepCheckpoint(
        out_model,
        {
            "stage": "truncate_layers",
            "input": rec["weights_sha256"],
            "method": method,
            "target": target,
            "data": data,
            "prune": prune,
            "truncate": truncate,
            "seed": seed,
            "device": device,
        },
    )
    state = TruncState(
        model,
        proto.evaluate(model),
        rows,
        list(rec.get("edits", [])),
        list(rec.get("replaced", [])),
        rows[-1]["step"],
        projected=recorded_projections(rec),
    )
    elapsed = 0.0
    if (resumed := ckpt.load()) is not None:
        ck_model, st = resumed
        elapsed = st.pop("elapsed_s")
        st.pop("key", None)  # the checkpoint's own input hash, not loop state
        state = TruncState(ck_model.to(dev), **st)
        print(f"[truncate_layers] resuming after {state.visited} candidate(s)", flush=True)

    def save_checkpoint(s: TruncState) -> None:
        st = {**s.to_json(), "elapsed_s": elapsed + time.perf_counter() - t_stage}
        rec_s = {**base, "edits": s.edits, "replaced": s.replaced, "projected": s.projected}
        ckpt.save(s.model, rec_s, st)

    state = truncation_stage(
        proto,
        state,
        order=order,
        scores=scores,
        goal_macs=(1 - reduction) * dense["macs"],
        dense=dense,
        truncate=truncate,
        seed=seed,
        on_visit=save_checkpoint,
        close_gap=last and m.close_gap,
    )
    if last and m.close_gap and prune["mode"] == "target":
        check_landing(
            method, proto.macs(state.model), dense["macs"], target, prune["mac_tolerance"]
        )
    wall = elapsed + time.perf_counter() - t_stage
    record = dict(base)
    record.update(
        stage="truncate_layers",
        edits=state.edits,
        replaced=state.replaced,
        projected=state.projected,
        wall_s={**rec.get("wall_s", {}), "truncate_layers": wall},
        truncation_stop=state.stop,
        method=method,
        target=target,
        mode=prune["mode"],
        dense_macs=dense["macs"],
        dense_val_acc1=dense["val_acc1"],
    )
    save_model(state.model.cpu(), out_model, record)
    write_dynamics(out_dynamics, state.rows)
    ckpt.clear()
    return record
