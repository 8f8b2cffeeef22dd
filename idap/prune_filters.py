"""Stage `prune_filters`: IDAP++ stage 1, iterative filter pruning (METHOD §2).

Peers (other criteria) run through exactly this loop: same schedule, floor, MAC-target
search, BN recalibration and recovery budget; only the ranking differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .artifact import load_model, read_record, save_model
from .checkpoint import StepCheckpoint, seed_step
from .context import check_model_fits, load_data, setup_runtime
from .datasets import dataset_info
from .methods import get_method, one_shot
from .models import get_spec
from .protocol import (
    Protocol,
    Timer,
    check_landing,
    dynamics_row,
    make_criterion,
    read_dynamics,
    write_dynamics,
)
from .schedule import code_fraction, cumulative_target

MAX_RETRIES = 2  # budget mode: halve a failing step's increment at most this often


@dataclass
class FilterState:
    """Loop state of stage 1; also what a checkpoint stores."""

    model: nn.Module
    rows: list[dict]
    edits: list[dict]
    step: int = 0  # last finished step
    reduction: float = 0.0  # cumulative MAC reduction reached so far (fraction)
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

    ``prune['mode']`` is ``target`` (reach the MAC target; steps whose val drop exceeds
    ``max_drop`` are flagged) or ``budget`` (roll back a step whose val drop exceeds
    ``max_drop``, halve its increment, retry at most twice, else stop there).
    ``prune['schedule']`` is ``paper`` (cumulative MAC targets, front-loaded) or ``code``
    (remove the fraction p0·(1 + k/K)^α of the remaining units, the authors' script).
    """
    p = proto.prune
    K, macs0, dense_val = p["steps"], dense["macs"], dense["val_acc1"]
    goal = share * target
    timer = Timer()
    for k in range(state.step + 1, K + 1):
        if state.reduction >= goal - 1e-9:
            state.stop = f"stage-1 goal -{100 * goal:.1f}% MACs reached at step {state.step}"
            break
        seed_step(seed, state.offset + k)
        frac = None
        if p["schedule"] == "paper":
            r_k = cumulative_target(k, K, target, share, p["alpha"])
            if r_k <= state.reduction and k < K:
                continue  # an earlier stage already removed this much
        else:  # fraction of remaining units, floored at the stage goal
            r_k, frac = goal, code_fraction(k, K, p["code_p0"], p["alpha"])
        increment, retries = r_k - state.reduction, 0
        while True:
            r_try = state.reduction + increment
            model, edit, macs = proto.prune_step(
                state.model, (1 - r_try) * macs0, frac, refine=k == K
            )
            cur = proto.evaluate(model)
            drop = dense_val - cur["val_acc1"]
            if p["mode"] == "target" or drop <= p["max_drop"]:
                break
            retries += 1
            if retries > MAX_RETRIES:
                state.stop = (
                    f"budget: step {k} dropped val Acc@1 by {drop:.2f} pp > "
                    f"{p['max_drop']} pp after {MAX_RETRIES} halvings; stopped at "
                    f"-{100 * state.reduction:.1f}% MACs"
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
        reached = 1 - macs / macs0
        note = (
            f"target -{100 * r_try:.1f}% MACs"
            if frac is None
            else f"remove {100 * frac:.1f}% of units"
        ) + f", reached -{100 * reached:.1f}%"
        if retries:
            note += f" (after {retries} rollback(s))"
        state.rows.append(
            dynamics_row(
                state.offset + k, "filter", cur, timer.lap(), dense_val, p["max_drop"], note=note
            )
        )
        state.edits.append({"stage": "filter", "step": state.offset + k, "removed": edit})
        state.model, state.step, state.reduction = model, k, reached
        print(f"[prune_filters] step {k}/{K}: {note}, val Acc@1 {cur['val_acc1']:.2f}", flush=True)
        if on_step is not None and k < K:
            on_step(state)
    state.stop = state.stop or f"{K} steps done"
    return state


def run(
    model_path: str,
    out_model: str,
    out_dynamics: str,
    dataset: str,
    method: str,
    target: float,
    data: dict,
    prune: dict,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    dynamics_in: str | None = None,
) -> dict:
    """Prune the model at ``model_path`` over ``prune['steps']`` steps.

    As the first stage (input: the dense model), its share of the target is
    ``prune['stage1_share']`` for methods that also truncate layers, else 1; after layer
    truncation (reversed order; input record and ``dynamics_in`` from that stage) it takes
    the model the rest of the way to the target. A killed run resumes from its last step.

    Returns:
        The saved model's record.
    """
    if not 0 < target < 1:
        raise ValueError(f"target must be a MAC reduction in (0, 1), got {target}")
    dev = setup_runtime(seed, device, threads)
    m = get_method(method)
    if m.one_shot:
        prune = one_shot(prune)
    d = load_data(dataset, data, seed, read_record(model_path)["arch"])
    model, rec = load_model(model_path)
    check_model_fits(rec, d, model_path)
    model.to(dev)
    info = dataset_info(dataset)
    spec = get_spec(rec["arch"])
    proto = Protocol(d, dev, spec, info.num_classes, info.in_chans, prune, make_criterion(m, prune))
    t_stage = time.perf_counter()
    first = "dense_macs" not in rec
    if first:
        dense = proto.evaluate(model)
        rows = [dynamics_row(0, "baseline", dense, 0.0, dense["val_acc1"], prune["max_drop"])]
    else:
        if dynamics_in is None:
            raise ValueError("prune_filters after another stage needs that stage's dynamics")
        dense = {"macs": rec["dense_macs"], "val_acc1": rec["dense_val_acc1"]}
        rows = read_dynamics(dynamics_in)
    share = prune["stage1_share"] if m.truncate and first else 1.0
    base = {key: rec[key] for key in ("arch", "num_classes", "in_chans", "input_size", "dataset")}
    ckpt = StepCheckpoint(
        out_model,
        {
            "stage": "prune_filters",
            "input": rec["weights_sha256"],
            "method": method,
            "target": target,
            "data": data,
            "prune": prune,
            "seed": seed,
            "device": device,
        },
    )
    state = FilterState(
        model,
        rows,
        list(rec.get("edits", [])),
        offset=rows[-1]["step"],
        reduction=1 - proto.macs(model) / dense["macs"],
    )
    elapsed = 0.0
    if (resumed := ckpt.load()) is not None:
        ck_model, st = resumed
        state = FilterState(
            ck_model.to(dev),
            st["rows"],
            st["edits"],
            st["step"],
            st["reduction"],
            offset=state.offset,
        )
        elapsed = st["elapsed_s"]
        print(f"[prune_filters] resuming after step {st['step']} from {ckpt.dir}", flush=True)

    def save_checkpoint(s: FilterState) -> None:
        st = {
            "step": s.step,
            "rows": s.rows,
            "edits": s.edits,
            "reduction": s.reduction,
            "elapsed_s": elapsed + time.perf_counter() - t_stage,
        }
        ckpt.save(
            s.model,
            {
                **base,
                "edits": s.edits,
                "replaced": rec.get("replaced", []),
                "projected": rec.get("projected", {}),
            },
            st,
        )

    state = filter_stage(
        proto, state, target=target, share=share, seed=seed, dense=dense, on_step=save_checkpoint
    )
    state.rows[-1]["note"] = "; ".join(
        filter(None, [state.rows[-1]["note"], f"stage 1 stopped: {state.stop}"])
    )
    if m.stages[-1] == "prune_filters" and prune["mode"] == "target":
        check_landing(
            method, proto.macs(state.model), dense["macs"], target, prune["mac_tolerance"]
        )
    wall = elapsed + time.perf_counter() - t_stage
    record = dict(base)
    record.update(
        stage="prune_filters",
        method=method,
        target=target,
        mode=prune["mode"],
        edits=state.edits,
        replaced=rec.get("replaced", []),
        projected=rec.get("projected", {}),
        dense_macs=dense["macs"],
        dense_val_acc1=dense["val_acc1"],
        stage1_stop=state.stop,
        wall_s={**rec.get("wall_s", {}), "prune_filters": wall},
    )
    save_model(state.model.cpu(), out_model, record)
    write_dynamics(out_dynamics, state.rows)
    ckpt.clear()
    return record
