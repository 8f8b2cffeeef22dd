"""Report `budget_table`: budget mode's verdict, the largest MAC reduction each method reaches
while its final model loses at most Δ pp of the dense val Acc@1 (docs/method.md §2).

One row per (model, dataset, method, Δ): the reduction found, the final test Acc@1 and its
drop against the seed's dense model, batch-1 latency, and what the search cost (probes,
iterations, wall time), mean ± std over seeds; each method's reduction is also paired
with IDAP++'s on the same seeds (difference and 95% interval).
"""

from __future__ import annotations

import pandas as pd

from idap.core.io import read_json
from idap.engine.stats import paired_interval
from idap.reporting.format import (
    MISSING,
    aggregate_seeds,
    is_num,
    load_dense,
    num,
    read_runs,
    write_table,
)
from idap.reporting.paired import REFERENCE


def budget_table(
    run_metrics: list[str],
    run_latency: list[str],
    dense_metrics: list[str],
    backend: str = "eager",
) -> pd.DataFrame:
    dense = load_dense(dense_metrics, "metrics")
    rows, reductions = [], {}
    for r in read_runs(run_metrics, run_latency, backend):
        seed = r.get("seed", 0)
        d = dense.get((r["dataset"], r["model"], seed), ({}, None))[0]
        search = {
            "Probes": r.get("budget_probes", MISSING),
            "Search iterations": r.get("budget_iterations", MISSING),
            "Search wall (s)": r.get("budget_wall_s", MISSING),  # every probe, not the kept one
        }
        answers = [(r.get("budget_max_drop"), r["gmacs"], r.get("test_acc1"), r["latency_b1_ms"])]
        for delta, a in (r.get("budget_by_delta") or {}).items():  # prune.budget_deltas
            if float(delta) != r.get("budget_max_drop"):  # its model was not kept: not timed
                answers.append((float(delta), a["gmacs"], a["test_acc1"], None))
        for delta, gmacs, acc, latency in answers:
            reached = 100 * (1 - gmacs / d["gmacs"]) if d.get("gmacs") else None
            reductions[(r["dataset"], r["model"], r["method"], delta, seed)] = reached
            rows.append(
                {
                    "Model": r["model"],
                    "Dataset": r["dataset"],
                    "Method": r["method"],
                    "Δ pp": delta if is_num(delta) else MISSING,
                    "Upper bound %": 100 * r["target"] if is_num(r.get("target")) else MISSING,
                    "Reduction %": reached if is_num(reached) else MISSING,
                    "Acc@1": acc if is_num(acc) else MISSING,
                    "Δ Acc@1 pp": acc - d["test_acc1"]
                    if is_num(acc) and d.get("test_acc1")
                    else MISSING,
                    "Latency b1 (ms)": latency or MISSING,
                    **search,
                }
            )
    raw = pd.DataFrame(rows)
    if raw.empty:
        return raw
    table = aggregate_seeds(raw, ["Model", "Dataset", "Method", "Δ pp"])
    table.insert(len(table.columns) - 1, "Reduction vs IDAP++ (pp)", [
        _paired(reductions, row) for _, row in table.iterrows()
    ])  # fmt: skip
    table.attrs["title"] = "Budget mode: the largest MAC reduction within Δ pp of the dense model"
    table.attrs["conventions"] = [
        "Δ pp = the largest val Acc@1 drop allowed (prune.max_drop), judged on the final, "
        "fine-tuned model; Upper bound = the grid target the search may not exceed.",
        "Reduction % = MACs removed by the accepted run, 100·(1 − pruned/dense); Acc@1 = its "
        "test top-1, Δ Acc@1 against the seed's dense model.",
        "Probes = whole runs the search job made (gallop, then bisection; the searches for "
        "several Δ share them); Search iterations and wall = their total training steps and "
        "seconds. Only prune.max_drop's model is kept and timed: the other Δs' latency is "
        f"{MISSING}.",
        "Reduction vs IDAP++ = the method's reduction minus IDAP++'s on the same seeds: mean "
        "[95% t-interval], * where the interval excludes 0.",
        f"Cells are mean ± sample std over seeds; {MISSING} = no value.",
    ]
    return table


def _paired(reductions: dict, row) -> str:
    if row["Method"] == REFERENCE:
        return "reference"
    pairs = [
        (v, reductions.get((d, m, REFERENCE, delta, s)))
        for (d, m, meth, delta, s), v in reductions.items()
        if (d, m, meth, delta) == (row["Dataset"], row["Model"], row["Method"], row["Δ pp"])
    ]
    diffs = [a - b for a, b in pairs if is_num(a) and is_num(b)]
    if not diffs:
        return MISSING
    if len(diffs) < 2:
        return f"{num(diffs[0])} (1 seed)"
    mean, lo, hi = paired_interval(diffs)
    mark = "*" if lo > 0 or hi < 0 else ""
    return f"{num(mean)} [{num(lo)}, {num(hi)}]{mark}"


def run(
    *,
    dense_metrics: list[str],
    run_metrics: list[str],
    run_latency: list[str],
    out_budget: str,
    latency_backend: str,
) -> None:
    """Write the budget table (report ``budget_table``; ``out_budget`` a stem: .md, .csv,
    .tex beside it), with ``latency_backend``'s batch-1 latency."""
    if not run_metrics:
        raise ValueError("no budget-mode runs to tabulate")
    if not all("budget_target" in read_json(p) for p in run_metrics):
        raise ValueError("the budget table needs budget-mode runs (prune.mode: budget)")
    table = budget_table(run_metrics, run_latency, dense_metrics, latency_backend)
    write_table(table, out_budget)
