"""Budget mode: the largest MAC reduction whose final model stays within ``max_drop``.

A user asks "compress as far as you can while losing at most Δ pp". The answer is judged on
the model they get (after the configured fine-tune), not right after a short recovery: each
probe is a whole run of the method in target mode at one reduction, on the run's one data
stream from its start, so the accepted probe is exactly the model a target-mode run at that
reduction gives. The search gallops (each passing probe doubles the reduction, up to the
configured target, the upper bound), then bisects between the largest passing and the
smallest failing reduction until they are ``budget_resolution`` apart or
``budget_probes`` runs are spent (docs/method.md §2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from idap.stages.state import RunState


@dataclass
class Probe:
    target: float
    final: dict | None  # the run's last dynamics row (None: the run failed)
    drop: float | None  # dense val Acc@1 minus the final model's, pp
    passed: bool
    iterations: int
    wall_s: float
    note: str = ""


def search(
    run_at: Callable[[float], RunState],
    upper: float,
    max_drop: float,
    dense: dict,
    probes: int,
    start: float,
    resolution: float,
    *,
    unit: str,
) -> tuple[RunState | None, list[Probe], str]:
    """Find the largest reduction in ``(0, upper]`` whose final val drop is <= ``max_drop``.

    Args:
        run_at: a whole target-mode run at one reduction, from the dense model.
        dense: the dense model's ``macs`` and ``val_acc1``.
        unit: what the reductions are of, for the log (``Measure.plural``).

    Returns:
        (the best passing run or None, every probe in order, why the search stopped). A
        probe that cannot reach its target (refused or missed) counts as failing.
    """
    best: RunState | None = None
    passed_r, failed_r = 0.0, None
    tried: list[Probe] = []
    r = min(upper, start * upper)
    while True:
        if len(tried) >= probes:
            stop = f"compute cap: {probes} probes"
            break
        t0 = time.perf_counter()
        try:
            state = run_at(r)
        except (ValueError, RuntimeError) as e:  # refused before step 1 or missed the target
            tried.append(Probe(r, None, None, False, 0, time.perf_counter() - t0, str(e)))
            state = None
        if state is not None:
            final = state.rows[-1]
            drop = dense["val_acc1"] - final["val_acc1"]
            wall = time.perf_counter() - t0
            tried.append(Probe(r, final, drop, drop <= max_drop, state.iterations, wall))
        print(f"[budget] {describe(tried[-1], max_drop, unit)}", flush=True)
        if tried[-1].passed:
            best, passed_r = state, r
        else:
            failed_r = r if failed_r is None else min(failed_r, r)
        if failed_r is None:  # gallop
            if r >= upper - 1e-9:
                stop = f"the upper bound -{100 * upper:.1f}% passes"
                break
            r = min(upper, 2 * r)
            continue
        if failed_r - passed_r <= resolution + 1e-9:
            stop = (
                f"bracketed: -{100 * passed_r:.1f}% passes, -{100 * failed_r:.1f}% fails "
                f"(resolution {100 * resolution:g} pp)"
            )
            break
        r = (passed_r + failed_r) / 2
    return best, tried, stop


class Cached:
    """``run_at`` that runs each reduction once: the searches for several Δ share probes
    (a probe's final model does not depend on Δ). A failed run stays failed."""

    def __init__(self, run_at: Callable[[float], RunState]):
        self.run_at = run_at
        self.runs: dict[float, tuple[RunState | None, Exception | None, float]] = {}

    def __call__(self, r: float) -> RunState:
        key = round(r, 9)
        if key not in self.runs:
            t0 = time.perf_counter()
            try:
                out = (self.run_at(r), None)
            except (ValueError, RuntimeError) as e:
                out = (None, e)
            self.runs[key] = (*out, time.perf_counter() - t0)
        state, error, _ = self.runs[key]
        if error is not None:
            raise error
        return state

    def union(self, searches: list[list[Probe]], max_drop: float) -> list[Probe]:
        """Every run made, once, in the order the searches first asked for it, judged
        against ``max_drop``, with its own wall time."""
        seen: dict[float, Probe] = {}
        for tried in searches:
            for p in tried:
                key = round(p.target, 9)
                if key not in seen:
                    ok = p.drop is not None and p.drop <= max_drop
                    seen[key] = replace(p, passed=ok, wall_s=self.runs[key][2])
        return list(seen.values())


def answer(tried: list[Probe], stop: str, dense: dict) -> dict:
    """One Δ's answer for the record: the reduction accepted (0: none), its final model's
    val drop, test Acc@1 and GMACs, the probes its search consulted and why it stopped."""
    ok = [t for t in tried if t.passed]
    best = max(ok, key=lambda t: t.target) if ok else None
    row = best.final if best is not None else None
    return {
        "target": best.target if best else 0.0,
        "val_drop": best.drop if best else 0.0,
        "test_acc1": row.get("test_acc1") if row else None,
        "gmacs": row["gmacs"] if row else dense["macs"] / 1e9,
        "probes": len(tried),
        "stop": stop,
    }


def describe(p: Probe, max_drop: float, unit: str) -> str:
    if p.drop is None:
        return f"probe -{100 * p.target:.1f}% {unit}: failed ({p.note})"
    verdict = "within" if p.passed else "over"
    return (
        f"probe -{100 * p.target:.1f}% {unit}: final val drop {p.drop:.2f} pp, {verdict} "
        f"{max_drop:g} pp ({p.iterations} iterations, {p.wall_s:.0f} s)"
    )


def probe_rows(tried: list[Probe], max_drop: float, first_step: int, unit: str) -> list[dict]:
    """Dynamics rows (stage ``probe``, each its run's final model) for the probes, placed
    after the accepted run's own rows."""
    nan = float("nan")
    rows = []
    for i, p in enumerate(tried):
        row = dict(p.final) if p.final is not None else {
            "params_m": nan, "gmacs": nan, "val_acc1": nan, "test_acc1": nan,
            "test_acc5": nan, "val_drop": nan,
        }  # fmt: skip
        row.update(
            step=first_step + i,
            stage="probe",
            wall_s=round(p.wall_s, 3),
            flagged=not p.passed,
            note=describe(p, max_drop, unit),
        )
        rows.append(row)
    return rows
