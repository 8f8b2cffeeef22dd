"""Report `ablation`: the seed's ablation table (full pipeline, reversed order, no fine-tune,
stage 1 only, stage 2 only) from the metrics of the IDAP++ variants that ran.

A variant that is not in the grid is listed with "missing" cells, never left out silently.
"""

from __future__ import annotations

import pandas as pd

from idap.core.io import read_json
from idap.engine.methods import METHODS
from idap.reporting.format import (
    GMACS_CONVENTION,
    MISSING,
    aggregate_seeds,
    is_num,
    load_dense,
    value,
    write_table,
)
from idap.reporting.paired import REFERENCE, paired_cells, paired_to_reference

VARIANTS = [m for m in METHODS.values() if m.ablation]
NOT_AT_TARGET = "not at the target"


def ablation_table(dense_metrics: list[str], run_metrics: list[str]) -> pd.DataFrame:
    """One row per (dataset, model, target) x IDAP++ variant in the seed's order; several
    seeds collapse into mean ± std cells."""
    dense = load_dense(dense_metrics, "metrics")
    runs = {}
    for p in run_metrics:
        r = read_json(p)
        runs[(r["dataset"], r["model"], r["target"], r.get("seed", 0), r["method"])] = r
    names = {v.name for v in VARIANTS}
    groups = sorted({k[:4] for k in runs if k[4] in names})
    paired = paired_to_reference(list(runs.values()))
    rows = []
    for dataset, model, target, seed in groups:
        base = dense.get((dataset, model, seed), (None, None))[0] or {}
        b_acc, b_macs = base.get("test_acc1"), base.get("gmacs")
        for v in VARIANTS:
            r = runs.get((dataset, model, target, seed, v.name), {})
            acc, macs = r.get("test_acc1"), r.get("gmacs")
            ok = is_num(macs) and is_num(b_macs) and b_macs > 0
            rows.append(
                {
                    "Model": model,
                    "Dataset": dataset,
                    "Target": target,
                    "Variant": v.ablation,
                    "Acc@1 before FT": value(r.get("acc1_before_finetune")),
                    "Acc@1": value(acc),
                    "Δ pp": acc - b_acc if is_num(acc) and is_num(b_acc) else MISSING,
                    "GMACs": value(macs),
                    "Δ%": 100.0 * (1.0 - macs / b_macs) if ok else MISSING,
                    "Params (M)": value(r.get("params_m")),
                }
            )
    for row in rows:  # paired differences to the full pipeline, over the seeds
        v = next(v for v in VARIANTS if v.ablation == row["Variant"])
        # stage 2 alone stops where truncation stops, short of the target: another MAC
        # budget than the full pipeline's, so no paired difference (not fair in kind)
        if not v.close_gap and is_num(row["GMACs"]):
            row["Δ vs full"] = row["McNemar p<0.05"] = NOT_AT_TARGET
            continue
        key = (row["Dataset"], row["Model"], row["Target"], v.name)
        row["Δ vs full"], row["McNemar p<0.05"] = paired_cells(paired.get(key), v.name == REFERENCE)
    cols = [
        "Model",
        "Dataset",
        "Target",
        "Variant",
        "Acc@1 before FT",
        "Acc@1",
        "Δ pp",
        "GMACs",
        "Δ%",
        "Params (M)",
        "Δ vs full",
        "McNemar p<0.05",
    ]
    df = aggregate_seeds(pd.DataFrame(rows, columns=cols), cols[:4])
    df.attrs["title"] = "Ablation of IDAP++ (same data, model and MAC target)"
    df.attrs["conventions"] = [
        "Acc@1 = top-1 on the test split, percent; Δ pp against the dense model.",
        f"{GMACS_CONVENTION}; Δ% = MAC reduction vs the dense model.",
        "Stage 2 alone reports the MACs truncation reached (no gap-closing filter step): "
        f'short of the target, it is not paired with the full pipeline ("{NOT_AT_TARGET}").',
        "Δ vs full = paired difference in test Acc@1 to the full pipeline over seeds, with "
        "its 95% t-interval (* = excludes 0); McNemar p<0.05 = seeds where an exact McNemar "
        "test on the same test images separates the two.",
        '"missing" = that variant was not run (add it to grid.methods).',
    ]
    return df


def run(*, dense_metrics: list[str], run_metrics: list[str], out_ablation: str) -> None:
    """Write the ablation table (report ``ablation``; ``out_ablation`` a stem: .md, .csv,
    .tex beside it)."""
    write_table(ablation_table(dense_metrics, run_metrics), out_ablation)
