"""The shared compression protocol (docs/method.md §2, §6): what every method's every step does.

Score on val -> rank with per-layer floor -> remove channels to a measured budget (MACs,
parameters or latency: ``prune.target_kind``, :mod:`idap.engine.measures`) ->
BN recalibration and a recovery fine-tune distilling from the dense model, both on the
run's one stream of training batches -> evaluate (val for decisions, test for the log only).
The protocol counts the optimiser steps it takes, so a run's training budget is measured.
"""

from __future__ import annotations

import copy
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from idap.core.io import atomic_path
from idap.data import Data
from idap.engine.criteria import Criterion, create_criterion
from idap.engine.measures import Measure, count_macs, create_measure
from idap.engine.methods import Method
from idap.engine.pruning import (
    apply_removal,
    build_graph,
    frozen_layers,
    prunable_layers,
    prune_to_target,
    rank_channels,
)
from idap.engine.train import accuracy, predict, recalibrate_bn, recover
from idap.models import ModelSpec, create_model

# MAC counts the landing refinement may spend to fit the last step into the tolerance band:
# at 80% sparsity one channel of a small net is a sizeable part of a 1% band.
REFINE_PROBES = 128

DYNAMICS_COLUMNS = [
    "step",
    "stage",
    "params_m",
    "gmacs",
    "cost",
    "val_acc1",
    "test_acc1",
    "test_acc5",
    "wall_s",
    "val_drop",
    "flagged",
    "note",
]
_FLOAT_COLUMNS = [c for c in DYNAMICS_COLUMNS if c not in ("step", "stage", "flagged", "note")]


def make_criterion(method: Method, prune_settings) -> Criterion:
    """The method's criterion with the ``prune`` settings it reads (e.g. ``normalize``)."""
    kwargs = dict(method.criterion_kwargs)
    kwargs.update({k: getattr(prune_settings, k) for k in method.uses_prune_settings})
    return create_criterion(method.criterion, **kwargs)


@dataclass
class Protocol:
    """Everything a pruning step needs, fixed for one compression run."""

    data: Data
    device: torch.device
    spec: ModelSpec
    num_classes: int
    in_chans: int
    prune: Any  # idap.core.settings PruneSettings
    criterion: Criterion
    initial_widths: dict[str, int] | None = None  # None: from a fresh registry model
    teacher: nn.Module | None = None  # the dense model: every recovery distils from it
    example: torch.Tensor = field(init=False)
    measure: Measure = field(init=False)  # what the target is a reduction of
    stream: Any = field(init=False)  # the run's TrainStream (position set per stage)
    iterations: int = field(init=False, default=0)  # optimiser steps taken after dense
    budget: int | None = field(init=False, default=None)  # cap on ``iterations`` (None: none)

    def __post_init__(self):
        self.example = self.data.example(self.device)
        self.measure = create_measure(self.prune, self.example, self.teacher)
        self.stream = self.data.train_stream()
        if self.initial_widths is None:
            fresh = create_model(self.spec.name, self.num_classes, self.in_chans)
            self.initial_widths = widths(fresh, set(self.spec.classifier))

    # -- measuring -------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict:
        """Val Acc@1 (decisions), test Acc@1/Acc@5 (log only), params, GMACs and the target
        measure (``cost``); the per-image val correctness too (``val_correct``, for paired
        decisions)."""
        val_logits, val_y = predict(model, self.data.val_loader(), self.device)
        test = self.data.test_loader()  # None when a caller has no test split (the API)
        test_logits, test_y = predict(model, test, self.device) if test else (None, None)
        macs, params = count_macs(model, self.example)
        nan = float("nan")
        return {
            "val_acc1": accuracy(val_logits, val_y, 1),
            "test_acc1": accuracy(test_logits, test_y, 1) if test else nan,
            "test_acc5": accuracy(test_logits, test_y, 5) if test else nan,
            "params_m": params / 1e6,
            "gmacs": macs / 1e9,
            "macs": macs,
            "cost": self.cost(model, macs, params),
            "val_correct": (val_logits.argmax(1) == val_y).numpy(),
        }

    def macs(self, model: nn.Module) -> int:
        return count_macs(model, self.example)[0]

    def cost(self, model: nn.Module, macs: int | None = None, params: int | None = None) -> float:
        """``model``'s target measure (counts already taken may be passed to save a count)."""
        known = {"macs": macs, "params": params}.get(self.measure.kind)
        return float(known) if known is not None else self.measure(model)

    # -- acting ----------------------------------------------------------------------
    def rank(self, model: nn.Module) -> tuple[list, set[str]]:
        """Every removable channel and head of ``model`` (above the floors), lowest score
        first, scored anew on the current model; and the frozen layers."""
        DG = build_graph(model, self.example)
        ignored = frozen_layers(model, DG, set(self.spec.classifier))
        if self.criterion.needs_data:
            layers = prunable_layers(model, ignored)
            n = self.prune.calib_batches
            if self.criterion.needs_labels:
                batches = self.data.calib_pairs(n, self.device)
            else:
                batches = self.data.calib_batches(n, self.device)
            self.criterion.prepare(model, batches, DG, layers)
        ranked = rank_channels(
            model,
            DG,
            self.criterion,
            ignored,
            self.initial_widths,
            self.prune.min_keep,
            self.prune.min_keep_fraction,
            self.prune.round_to,
        )
        model.zero_grad(set_to_none=True)  # gradient-based criteria leave .grad behind
        return ranked, ignored

    def floor_cost(self, model: nn.Module) -> float:
        """The target measure left when every channel above the per-layer floors is
        removed: the least filter pruning can reach on ``model``."""
        ranked, _ = self.rank(model)
        pruned = copy.deepcopy(model)
        apply_removal(pruned, self.example, ranked)
        return self.cost(pruned)

    def prune_step(
        self,
        model: nn.Module,
        target: float,
        unit_fraction: float | None = None,
        refine: bool = True,
        goal: float | None = None,
    ) -> tuple[nn.Module, dict, float]:
        """One filter-pruning step; returns (recovered model, edit, its target measure).

        Removes channels down to ``target`` (in the target measure), or, with
        ``unit_fraction``, that fraction of the remaining prunable units (never going below
        ``target``). ``refine`` lands within the measure's tolerance of the budget (it costs
        extra probes, so intermediate steps may skip it; every method's final step is
        refined). ``goal`` is the stage's final budget: removal cannot be undone, so an
        unrefined step whose first unit past ``target`` also passes the goal's tolerance
        band (a coarse unit: ``prune.round_to``, a head) is refined instead of failing the
        stage's landing.

        A refined step that cannot land in the band under ``target`` (coarse units near the
        floors: no selection does) is not taken when ``model`` already lies within the
        tolerance above it: the landing check is two-sided, and one more step could only
        overshoot. The model comes back unchanged, with an empty edit.
        """
        ranked, ignored = self.rank(model)
        before = self.cost(model)
        pruned = None
        if unit_fraction is not None:
            units = sum(m.weight.shape[0] for m in prunable_layers(model, ignored).values())
            n = min(len(ranked), round(unit_fraction * units))
            pruned = copy.deepcopy(model)
            edit = apply_removal(pruned, self.example, ranked[:n], self.criterion)
            cost = self.cost(pruned)
            if cost < target:  # the fraction overshoots the stage goal: stop at the goal
                pruned = None
        if pruned is None:
            pruned, edit, cost = self.prune_to(model, ranked, target, refine)
            tol = self.measure.tolerance
            if not refine and goal is not None and cost < (1 - tol) * goal:
                pruned, edit, cost = self.prune_to(model, ranked, target, refine=True)
                refine = True
            if refine and cost < (1 - tol) * target and target < before <= (1 + tol) * target:
                return model, {}, before
        if before > target and cost >= before and self.measure.deterministic:
            raise RuntimeError(
                f"pruning step removed no {self.measure.plural} ({before} -> {cost})"
            )
        self.settle(pruned, iters=self.prune.recovery_iters)
        return pruned, edit, cost

    def prune_to(
        self, model: nn.Module, ranked: list, target: float, refine: bool = True
    ) -> tuple[nn.Module, dict, float]:
        """``model`` without the first channels of ``ranked`` that bring its target measure
        to ``target`` (within tolerance when ``refine``); not recovered.

        A timed measure repeats only to a few per cent, and the search keeps the first
        candidate that reads under its bound, a reading that tends to be low. A refined
        search under such a measure aims at the lower half of the band first, so that the
        landing check's fresh, two-sided reading has room on both sides; where no selection
        reads in that half (coarse units), the whole band, on the same timings."""
        tol, probes = self.measure.tolerance, REFINE_PROBES if refine else 0

        def search(upper: float, tolerance: float, cache: dict | None = None):
            return prune_to_target(
                model,
                self.example,
                ranked,
                upper,
                tolerance,
                probes,
                self.criterion,
                self.measure,
                cache,
            )

        if self.measure.deterministic or not refine:
            return search(target, tol)
        cache: dict = {}
        upper = (1 - tol / 2) * target
        try:
            pruned, edit, cost = search(upper, 1 - (1 - tol) * target / upper, cache)
            if cost >= (1 - tol) * target:
                return pruned, edit, cost
        except RuntimeError:  # only the upper half is reachable: the whole band decides
            pass
        return search(target, tol, cache)

    def settle(self, model: nn.Module, iters: int, recalibrate: bool = True) -> None:
        """BN recalibration (unless ``recalibrate`` is False) then ``iters`` recovery
        iterations distilling from the dense model, after any structural change; both draw
        the next batches of the run's stream. Recovery never takes the run past its training
        budget."""
        if self.budget is not None:
            iters = max(0, min(iters, self.budget - self.iterations))
        n_bn = self.prune.bn_recalib_batches if recalibrate else 0
        recalibrate_bn(model, self.stream.take(n_bn), n_bn, self.device)
        if self.teacher is None:
            raise ValueError("recovery needs the dense model as its teacher")
        recover(
            model,
            self.teacher,
            self.stream.take(iters),
            iters,
            self.spec.feature_taps,
            self.prune.distill_lambda,
            self.prune.lr,
            self.prune.weight_decay,
            self.device,
        )
        self.iterations += max(iters, 0)


def check_landing(
    method: str, cost: float, dense_cost: float, target: float, measure: Measure
) -> None:
    """Fail a method whose final target measure is not within its tolerance of the target
    (docs/method.md §6).

    Raises:
        RuntimeError: naming the method, the reduction reached and the miss.
    """
    goal = (1 - target) * dense_cost
    miss = cost / goal - 1
    if abs(miss) > measure.tolerance + 1e-9:
        raise RuntimeError(
            f"{method} missed its {measure.noun} target: reached "
            f"-{100 * (1 - cost / dense_cost):.2f}% {measure.plural} for a -{100 * target:.1f}% "
            f"target, {100 * miss:+.2f}% of the target {measure.plural} "
            f"(tolerance ±{100 * measure.tolerance:g}%)"
        )


def widths(model: nn.Module, ignored: set[str]) -> dict[str, int]:
    """Output width of every prunable layer (the floor is a share of the initial width)."""
    return {n: m.weight.shape[0] for n, m in prunable_layers(model, ignored).items()}


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt


def dynamics_row(
    step: int, stage: str, m: dict, wall_s: float, ref_val: float, max_drop: float, note: str = ""
) -> dict:
    drop = ref_val - m["val_acc1"]
    return {
        "step": step,
        "stage": stage,
        "params_m": round(m["params_m"], 6),
        "gmacs": round(m["gmacs"], 6),
        "cost": m["cost"],
        "val_acc1": round(m["val_acc1"], 4),
        "test_acc1": round(m["test_acc1"], 4),
        "test_acc5": round(m["test_acc5"], 4),
        "wall_s": round(wall_s, 3),
        "val_drop": round(drop, 4),
        "flagged": bool(drop > max_drop),
        "note": note,
    }


def write_dynamics(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=DYNAMICS_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_dynamics(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["step"] = int(r["step"])
        for k in _FLOAT_COLUMNS:
            r[k] = float(r[k])
        r["flagged"] = r["flagged"] == "True"
    return rows
