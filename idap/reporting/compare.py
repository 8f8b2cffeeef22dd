"""Reports `compare` and `pareto`: the fair-comparison views (docs/method.md §6) over methods,
targets and seeds.

- comparison table: one row per (model, dataset, method), one column group per MAC target
  (Acc@1 after and before the final fine-tune, GMACs, params, batch-1 latency), mean ± std
  over seeds, and each method's paired difference to IDAP++ (95% interval, McNemar);
- compression-cost table: wall seconds per stage and in total, iterations and images seen;
- runs.csv: one numeric row per run, with its family (the axis its target is on);
- Pareto plots: Acc@1 vs GMACs and Acc@1 vs latency, per model and dataset.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from idap.core.io import atomic_path  # noqa: E402
from idap.reporting.format import (  # noqa: E402
    GMACS_CONVENTION,
    MISSING,
    UNSTRUCTURED,
    aggregate_seeds,
    family,
    is_num,
    method_series,
    read_runs,
    write_table,
)
from idap.reporting.paired import REFERENCE, paired_cells, paired_to_reference  # noqa: E402

STAGES = ("prune_filters", "truncate_layers", "sparsify", "finetune")


def _structured(runs: list[dict]) -> list[dict]:
    """The runs on the MAC axis: an unstructured method keeps the dense MACs and targets a
    parameter sparsity, so it has its own table (idap.reporting.sparsity)."""
    return [r for r in runs if family(r) != UNSTRUCTURED]


def _ranks(raw: pd.DataFrame) -> pd.Series:
    """Rank of each method's mean Acc@1 within (model, dataset, target); 1 = best."""
    keys = ["Model", "Dataset", "Method", "Target"]
    acc = raw.assign(acc=pd.to_numeric(raw["Acc@1"], errors="coerce"))
    means = acc.groupby(keys, sort=False)["acc"].mean()
    ranks = means.groupby(level=["Model", "Dataset", "Target"]).rank(ascending=False, method="min")
    return ranks.map(lambda r: MISSING if pd.isna(r) else int(r))


def comparison_table(
    run_metrics: list[str],
    run_latency: list[str],
    backend: str = "eager",
    dense_metrics: list[str] | None = None,
    dense_latency: list[str] | None = None,
    reference: str = REFERENCE,
) -> pd.DataFrame:
    """Methods x targets: Acc@1 (after and before the final fine-tune), GMACs, params and
    batch-1 latency (mean ± std over seeds), each method's paired difference to the
    reference (IDAP++, or e.g. its tuned variant) with its 95% interval, and the seeds where
    McNemar finds the difference significant."""
    rows = []
    runs = _structured(read_runs(run_metrics, run_latency, backend))
    dense = {
        (d["dataset"], d["model"], d.get("seed", 0)): d
        for d in read_runs(dense_metrics or [], dense_latency, backend)
    }
    paired = paired_to_reference(runs, reference)
    ref = "IDAP++" if reference == REFERENCE else reference
    for r in runs:
        base = dense.get((r["dataset"], r["model"], r.get("seed", 0)), {})
        rows.append(
            {
                "Model": r["model"],
                "Dataset": r["dataset"],
                "Method": r["method"],
                "Target": r["target"],
                "Acc@1": r.get("test_acc1"),
                "Acc@1 before FT": r.get("acc1_before_finetune"),
                "GMACs": r.get("gmacs"),
                "Params (M)": r.get("params_m"),
                "Latency b1 (ms)": r["latency_b1_ms"]
                if r["latency_b1_ms"] is not None
                else MISSING,
                "Speed-up ÷ MAC reduction": _speedup_per_mac(base, r),
            }
        )
    cols = [
        "Model",
        "Dataset",
        "Method",
        "Target",
        "Acc@1",
        "Acc@1 before FT",
        "GMACs",
        "Params (M)",
        "Latency b1 (ms)",
        "Speed-up ÷ MAC reduction",
    ]
    raw = pd.DataFrame(rows, columns=cols)
    agg = aggregate_seeds(raw, cols[:4])
    seeds = agg.pop("Seeds") if "Seeds" in agg else None
    agg["Rank"] = _ranks(raw).reindex(pd.MultiIndex.from_frame(agg[cols[:4]])).to_numpy()
    cells = [
        paired_cells(paired.get((d, m, t, meth)), meth == reference)
        for m, d, meth, t in agg[cols[:4]].itertuples(index=False)
    ]
    agg[f"Δ vs {ref}"] = [c[0] for c in cells]
    agg["McNemar p<0.05"] = [c[1] for c in cells]
    values = [*cols[4:], "Rank", f"Δ vs {ref}", "McNemar p<0.05"]
    wide = agg.pivot(index=["Model", "Dataset", "Method"], columns="Target", values=values)
    wide.columns = [f"{v} @{100 * float(t):g}%" for v, t in wide.columns]
    wide = wide.reset_index().fillna(MISSING)
    wide["Seeds"] = int(seeds.max()) if seeds is not None and len(seeds) else 1
    wide.attrs["title"] = f"Methods compared at equal MAC targets (latency: {backend})"
    wide.attrs["conventions"] = [
        "@x% = runs pruned to x% fewer MACs than the dense model (measured after pruning); "
        "unstructured methods (a parameter-sparsity target) are in the sparsity table.",
        "Acc@1 = top-1 on the test split, percent; mean ± sample std over seeds.",
        "Rank = place of the method's mean Acc@1 among the methods at that target, model "
        "and dataset (1 = best; ties share a place).",
        "Acc@1 before FT = test top-1 after the last recovery, before the final fine-tune.",
        f"Δ vs {ref} = mean over seeds of the paired difference in test Acc@1 (method minus "
        f"{ref}, same split, dense model and data stream), with its 95% t-interval; * = the "
        "interval excludes 0. McNemar p<0.05 = seeds where an exact McNemar test on the same "
        "test images finds the two models' errors different.",
        GMACS_CONVENTION + f". Latency b1 = median ms per image, batch 1, fp32, backend "
        f"{backend} (report.latency_backend).",
        "Speed-up ÷ MAC reduction = (dense latency / compressed latency) / (dense GMACs / "
        "compressed GMACs) on that backend: 1 = every MAC saved is time saved.",
        "Every method: same steps and schedule, floor, MAC-target search, BN recalibration, "
        "one stream of training batches per seed and the same total of post-dense training "
        "iterations (truncation trials and gap steps included).",
    ]
    return wide


def _speedup_per_mac(base: dict, run: dict):
    """(dense/compressed latency) / (dense/compressed GMACs), or MISSING."""
    vals = (
        base.get("latency_b1_ms"),
        run.get("latency_b1_ms"),
        base.get("gmacs"),
        run.get("gmacs"),
    )
    if not all(is_num(v) and v > 0 for v in vals):
        return MISSING
    b_lat, lat, b_macs, macs = vals
    return (b_lat / lat) / (b_macs / macs)


def cost_table(run_metrics: list[str]) -> pd.DataFrame:
    """Wall seconds of each compression stage, per method and target (mean ± std)."""
    rows = []
    runs = read_runs(run_metrics)
    used = {s for r in runs for s in (r.get("compress_wall_s") or {})}
    stages = [s for s in STAGES if s in used] or list(STAGES)  # the grid's stages only
    for r in runs:
        wall = r.get("compress_wall_s") or {}
        row = {
            "Model": r["model"],
            "Dataset": r["dataset"],
            "Method": r["method"],
            "Target": r["target"],
        }
        for s in stages:
            row[f"{s} (s)"] = wall.get(s, "—" if wall else MISSING)
        nums = [v for v in wall.values() if is_num(v)]
        row["total (s)"] = float(sum(nums)) if nums else MISSING
        row["Iterations"] = r.get("iterations", MISSING)
        truncates = "truncate_layers" in wall
        row["Truncation trials"] = r.get("truncation_trials", MISSING) if truncates else "—"
        row["Trial iterations"] = r.get("truncation_iters", MISSING) if truncates else "—"
        row["Images seen"] = r.get("images_seen", MISSING)
        rows.append(row)
    cols = ["Model", "Dataset", "Method", "Target", *[f"{s} (s)" for s in stages], "total (s)"]
    cols += ["Iterations", "Truncation trials", "Trial iterations", "Images seen"]
    df = aggregate_seeds(pd.DataFrame(rows, columns=cols), cols[:4])
    df.attrs["title"] = "Cost of compression: wall time per stage"
    df.attrs["conventions"] = [
        "Seconds of wall time of each stage's job on the machine that ran it (mean ± std over "
        "seeds); — = the method has no such stage. Dense training is not included.",
        "Iterations = optimiser steps after the dense model (recoveries, truncation trials, "
        "gap steps, final fine-tune); Images seen = distinct training images they drew.",
        "Truncation trials = block removals stage 2 tried; Trial iterations = the recovery "
        "iterations they spent (equal-MAC filter branches included); — = no stage 2.",
    ]
    return df


def pareto(
    *,
    dense_metrics: list[str],
    run_metrics: list[str],
    dense_latency: list[str],
    run_latency: list[str],
    out_plot: str,
    latency_backend: str,
) -> None:
    """Acc@1 vs GMACs and Acc@1 vs batch-1 latency (on ``latency_backend``) for one model on
    one dataset (report ``pareto``), as the PNG ``out_plot``."""
    backend = latency_backend
    runs = _structured(read_runs(run_metrics, run_latency, backend))
    dense = read_runs(dense_metrics, dense_latency, backend)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = "osD^v<>ph*"
    series = method_series(runs, ("gmacs", "latency_b1_ms"))
    for i, (m, s) in enumerate(series.items()):
        kw = dict(marker=markers[i % len(markers)], capsize=3, label=m, linestyle="-")
        axes[0].errorbar(s["gmacs"], s["acc"], yerr=s["err"], **kw)
        axes[1].errorbar(s["latency_b1_ms"], s["acc"], yerr=s["err"], **kw)
    if dense:
        axes[0].plot(
            [np.mean([d["gmacs"] for d in dense])],
            [np.mean([d["test_acc1"] for d in dense])],
            "k*",
            ms=12,
            label="dense",
        )
        lat = [d["latency_b1_ms"] for d in dense if d["latency_b1_ms"] is not None]
        if lat:
            axes[1].plot(
                [np.mean(lat)],
                [np.mean([d["test_acc1"] for d in dense])],
                "k*",
                ms=12,
                label="dense",
            )
    title = f"{runs[0]['model']} on {runs[0]['dataset']}" if runs else ""
    ylabel = "test Acc@1 (%), mean and 95% interval over seeds"
    axes[0].set(xlabel="GMACs per image (batch 1)", ylabel=ylabel, title=title)
    axes[1].set(xlabel=f"latency, batch 1 (ms, median, {backend})", ylabel=ylabel, title=title)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_plot) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


RUN_COLUMNS = (
    "dataset",
    "model",
    "seed",
    "method",
    "family",
    "target",
    "test_acc1",
    "test_acc5",
    "val_acc1",
    "acc1_before_finetune",
    "gmacs",
    "params_m",
    "latency_b1_ms",
    "deviation_mean",
    "deviation_p95",
    "iterations",
    "finetune_iterations",
    "truncation_trials",
    "truncation_iters",
    "images_seen",
    "compress_wall_s",
)


def runs_table(
    run_metrics: list[str], run_latency: list[str], backend: str = "eager"
) -> pd.DataFrame:
    """One row per run, every metric a number (NaN where a run lacks it): for analysis;
    latency_b1_ms is ``backend``'s. ``family`` says which axis ``target`` is on: a MAC
    reduction (``structured``) or a parameter sparsity (``unstructured``); ``missing`` for a
    method neither its metrics nor the registry know."""
    rows = []
    for r in read_runs(run_metrics, run_latency, backend):
        row = {k: r.get(k) for k in RUN_COLUMNS}
        row["family"] = family(r)
        wall = r.get("compress_wall_s") or {}
        row["compress_wall_s"] = sum(v for v in wall.values() if is_num(v)) if wall else None
        row["seed"] = r.get("seed", 0)
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    numeric = [c for c in RUN_COLUMNS if c not in ("dataset", "model", "method", "family")]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return df.sort_values(["dataset", "model", "target", "method", "seed"], kind="stable")


def run(
    *,
    dense_metrics: list[str],
    run_metrics: list[str],
    dense_latency: list[str],
    run_latency: list[str],
    out_comparison: str,
    out_cost: str,
    out_runs: str,
    latency_backend: str,
    reference: str,
) -> None:
    """Write the comparison and cost tables (stems: .md, .csv, .tex) and the tidy runs CSV
    (report ``compare``); latency is ``latency_backend``'s, differences are to ``reference``."""
    table = comparison_table(
        run_metrics, run_latency, latency_backend, dense_metrics, dense_latency, reference
    )
    write_table(table, out_comparison)
    write_table(cost_table(run_metrics), out_cost)
    with atomic_path(out_runs) as tmp:
        runs_table(run_metrics, run_latency, latency_backend).to_csv(tmp, index=False)
