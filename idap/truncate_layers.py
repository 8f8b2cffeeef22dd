"""Stage `truncate_layers`: IDAP++ stage 2, flow-guided layer truncation (METHOD §3).

Blocks whose input and output shapes are equal are replaced by identity, least-changing
(lowest block divergence) first, each tried removal recovered and accepted or reverted on
val. In target mode a final filter step closes any gap to the MAC target, so every method
ends on the same MACs.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .artifact import load_model, save_model
from .checkpoint import StepCheckpoint, seed_step
from .context import load_data, setup_runtime
from .datasets import dataset_info
from .methods import get_method
from .models import ModelSpec, get_spec
from .protocol import (
    Protocol,
    Timer,
    clone,
    dynamics_row,
    make_criterion,
    read_dynamics,
    write_dynamics,
)
from .scores import block_divergence


@torch.no_grad()
def candidates(model: nn.Module, spec: ModelSpec, example: torch.Tensor) -> dict[str, nn.Module]:
    """Live blocks of the architecture's block types whose output shape equals their input's,
    excluding any block that is the last live one of its stage."""
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
    out = {}
    for n, m in blocks.items():
        stage = next((s for s in spec.stages if n.startswith(s + ".")), None)
        if stage is None or live_per_stage[stage] < 2:
            continue
        if n in shapes and shapes[n][0] == shapes[n][1]:
            out[n] = m
    return out


def run(
    model_path: str,
    dynamics_in: str,
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
    """Truncate blocks of the filter-pruned model toward the full MAC target ``target``."""
    dev = setup_runtime(seed, device, threads)
    d = load_data(dataset, data, seed)
    model, rec = load_model(model_path)
    model.to(dev)
    info = dataset_info(dataset)
    spec = get_spec(rec["arch"])
    proto = Protocol(
        d,
        dev,
        spec,
        info.num_classes,
        info.in_chans,
        prune,
        make_criterion(get_method(method), prune),
    )
    rows = read_dynamics(dynamics_in)
    step = rows[-1]["step"]
    dense_val = rec["dense_val_acc1"]
    macs0 = rec["dense_macs"]
    goal = (1 - target) * macs0
    tol = prune["mac_tolerance"]
    t_stage = time.perf_counter()
    timer = Timer()
    cur = proto.evaluate(model)
    replaced = list(rec.get("replaced", []))
    edits = list(rec.get("edits", []))
    cands = candidates(model, spec, proto.example)
    scores = block_divergence(model, d.calib_batches(prune["calib_batches"], dev), cands)
    order = sorted(scores, key=scores.get)
    print(
        "[truncate_layers] candidates by divergence: "
        + ", ".join(f"{n}={scores[n]:.3f}" for n in order),
        flush=True,
    )
    rejections, stop, first, elapsed = 0, "no candidate left", 0, 0.0
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
    if (resumed := ckpt.load()) is not None:
        model, st = resumed
        model.to(dev)
        rows, edits, replaced, step = st["rows"], st["edits"], st["replaced"], st["step"]
        rejections, cur, first, elapsed = (
            st["rejections"],
            st["cur"],
            st["visited"],
            st["elapsed_s"],
        )
        print(f"[truncate_layers] resuming after {first} candidate(s) from {ckpt.dir}", flush=True)
    for i, name in enumerate(order):
        if i < first:
            continue
        if cur["macs"] <= goal:
            stop = "MAC target met"
            break
        if rejections >= truncate["max_rejections"]:
            stop = f"{rejections} consecutive rejections"
            break
        if name not in candidates(model, spec, proto.example):
            continue  # its stage is down to one live block
        trial = clone(model)
        trial.set_submodule(name, nn.Identity())
        trial_macs = proto.macs(trial)
        if trial_macs < (1 - tol) * goal:
            print(f"[truncate_layers] skip {name}: would overshoot the MAC target", flush=True)
            continue
        seed_step(seed, step + 1)
        proto.settle(trial, teacher=model, iters=truncate["recovery_iters"])
        res = proto.evaluate(trial)
        cost = cur["val_acc1"] - res["val_acc1"]
        if prune["mode"] == "budget":  # the total drop vs the dense model stays within budget
            accepted = dense_val - res["val_acc1"] <= prune["max_drop"]
        else:  # this block may cost at most block_tolerance relative to the model before it
            accepted = cost <= truncate["block_tolerance"]
        step += 1
        verdict = "accepted" if accepted else "rejected"
        note = f"{verdict} {name} (D_b={scores[name]:.4f}, val cost {cost:+.2f} pp)"
        print(f"[truncate_layers] {note}", flush=True)
        if accepted:
            model, cur, rejections = trial, res, 0
            replaced.append(name)
            edits.append({"stage": "truncation", "step": step, "replaced": name})
            rows.append(
                dynamics_row(
                    step, "truncation", res, timer.lap(), dense_val, prune["max_drop"], note
                )
            )
        else:
            rejections += 1
            rows.append(
                dynamics_row(
                    step, "truncation", cur, timer.lap(), dense_val, prune["max_drop"], note
                )
            )
        state = {
            "visited": i + 1,
            "rows": rows,
            "edits": edits,
            "replaced": replaced,
            "step": step,
            "rejections": rejections,
            "cur": cur,
            "elapsed_s": elapsed + time.perf_counter() - t_stage,
        }
        base = {k: v for k, v in rec.items() if k not in ("weights", "weights_sha256", "format")}
        ckpt.save(model, {**base, "edits": edits, "replaced": replaced}, state)
    else:
        if cur["macs"] <= goal:
            stop = "MAC target met"
    rows[-1]["note"] = "; ".join(filter(None, [rows[-1]["note"], f"stage 2 stopped: {stop}"]))
    if cur["macs"] > goal and prune["mode"] == "target":
        # Target mode: one more filter step on the same score closes the gap (METHOD §3).
        seed_step(seed, step + 1)
        model, edit, macs = proto.prune_step(model, goal)
        cur = proto.evaluate(model)
        step += 1
        rows.append(
            dynamics_row(
                step,
                "filter",
                cur,
                timer.lap(),
                dense_val,
                prune["max_drop"],
                note=f"gap-closing step: reached -{100 * (1 - macs / macs0):.1f}% MACs",
            )
        )
        edits.append({"stage": "filter", "step": step, "removed": edit})
    wall = elapsed + time.perf_counter() - t_stage
    record = {k: v for k, v in rec.items() if k not in ("weights", "weights_sha256", "format")}
    record.update(
        stage="truncate_layers",
        edits=edits,
        replaced=replaced,
        wall_s={**rec.get("wall_s", {}), "truncate_layers": wall},
        truncation_stop=stop,
    )
    save_model(model.cpu(), out_model, record)
    write_dynamics(out_dynamics, rows)
    ckpt.clear()
    return record
