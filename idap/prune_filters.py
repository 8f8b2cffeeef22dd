"""Stage `prune_filters`: IDAP++ stage 1, iterative filter pruning (METHOD §2).

Peers (other criteria) run through exactly this loop: same schedule, floor, MAC-target
search, BN recalibration and recovery budget; only the ranking differs.
"""

from __future__ import annotations

import time

from .artifact import load_model, save_model
from .checkpoint import StepCheckpoint, seed_step
from .context import load_data, setup_runtime
from .datasets import dataset_info
from .methods import get_method
from .models import get_spec
from .protocol import Protocol, Timer, dynamics_row, make_criterion, write_dynamics
from .schedule import cumulative_target


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
) -> dict:
    """Prune the dense model at ``model_path`` over ``prune['steps']`` steps.

    The cumulative MAC reduction after step k is R_k = share·R·(1 − (1 − k/K)^α), where
    share is ``prune['stage1_share']`` for methods that also truncate layers, else 1.

    Returns:
        The saved model's record.
    """
    if not 0 < target < 1:
        raise ValueError(f"target must be a MAC reduction in (0, 1), got {target}")
    dev = setup_runtime(seed, device, threads)
    m = get_method(method)
    d = load_data(dataset, data, seed)
    model, rec = load_model(model_path)
    model.to(dev)
    info = dataset_info(dataset)
    proto = Protocol(
        d,
        dev,
        get_spec(rec["arch"]),
        info.num_classes,
        info.in_chans,
        prune,
        make_criterion(m, prune),
    )
    t_stage = time.perf_counter()
    timer = Timer()
    dense = proto.evaluate(model)
    rows = [dynamics_row(0, "baseline", dense, timer.lap(), dense["val_acc1"], prune["max_drop"])]
    share = prune["stage1_share"] if m.truncate else 1.0
    macs0 = dense["macs"]
    edits = list(rec.get("edits", []))
    K = prune["steps"]
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
    start, elapsed = 1, 0.0
    if (resumed := ckpt.load()) is not None:
        model, state = resumed
        model.to(dev)
        rows, edits, elapsed = state["rows"], state["edits"], state["elapsed_s"]
        start = state["step"] + 1
        print(f"[prune_filters] resuming after step {state['step']} from {ckpt.dir}", flush=True)
    for k in range(start, K + 1):
        seed_step(seed, k)
        r_k = cumulative_target(k, K, target, share, prune["alpha"])
        model, edit, macs = proto.prune_step(model, (1 - r_k) * macs0)
        cur = proto.evaluate(model)
        rows.append(
            dynamics_row(
                k,
                "filter",
                cur,
                timer.lap(),
                dense["val_acc1"],
                prune["max_drop"],
                note=f"target -{100 * r_k:.1f}% MACs, reached -{100 * (1 - macs / macs0):.1f}%",
            )
        )
        edits.append({"stage": "filter", "step": k, "removed": edit})
        print(
            f"[prune_filters] step {k}/{K}: {rows[-1]['note']}, val Acc@1 {cur['val_acc1']:.2f}",
            flush=True,
        )
        if k < K:
            state = {
                "step": k,
                "rows": rows,
                "edits": edits,
                "elapsed_s": elapsed + time.perf_counter() - t_stage,
            }
            ckpt.save(model, {**base, "edits": edits, "replaced": rec.get("replaced", [])}, state)
    wall = elapsed + time.perf_counter() - t_stage
    record = dict(base)
    record.update(
        stage="prune_filters",
        method=method,
        target=target,
        edits=edits,
        replaced=rec.get("replaced", []),
        dense_macs=macs0,
        dense_val_acc1=dense["val_acc1"],
        wall_s={"prune_filters": wall},
    )
    save_model(model.cpu(), out_model, record)
    write_dynamics(out_dynamics, rows)
    ckpt.clear()
    return record
