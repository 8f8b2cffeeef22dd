"""Report `sparsity_report`: structured and unstructured methods side by side.

The two families prune along different axes: a structured method's target is a MAC reduction
(filters and layers removed), an unstructured one's a parameter sparsity (weights zeroed,
shapes kept). Neither axis alone is fair to both, so every row carries both: the fraction of
the dense model's prunable weights that are gone (the common axis), dense-kernel GMACs (what
an ordinary kernel computes, zeros included), non-zero GMACs (what a zero-skipping kernel
could at best save) and batch-1 latency on the main backend and on a CPU sparse kernel.

- sparsity table: one row per (model, dataset, method, target), mean ± std over seeds, with
  the paired difference to IDAP++ at the same nominal target;
- sparsity plot: Acc@1 against parameter sparsity and against measured batch-1 latency.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from idap.core.io import atomic_path  # noqa: E402
from idap.engine.methods import METHODS  # noqa: E402
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

SPARSE_BACKEND = "sparse_csr"  # idap.models.deploy: CSR weights, a CPU sparse kernel
KEYS = ["Model", "Dataset", "Method", "Family", "Target"]
COLUMNS = [
    *KEYS,
    "Param sparsity (%)",
    "Acc@1",
    "Acc@1 before FT",
    "Δ vs IDAP++",
    "McNemar p<0.05",
    "GMACs",
    "Non-zero GMACs",
    "Latency b1 (ms)",
    "Latency b1 sparse kernel (ms)",
]


def axis(target, fam: str) -> str:
    """A nominal target with its axis, so 0.5 never reads the same for both families."""
    if not is_num(target):
        return "—"
    if fam == UNSTRUCTURED:
        return f"{100 * float(target):g}% sparsity"
    return f"−{100 * float(target):g}% MACs"


def _read(metrics: list[str], latency: list[str] | None, backend: str) -> list[dict]:
    """read_runs with the sparse kernel's batch-1 latency beside ``backend``'s, and each run's
    family and sparsity in percent."""
    runs = read_runs(metrics, latency, backend)
    for r, s in zip(runs, read_runs(metrics, latency, SPARSE_BACKEND), strict=True):
        r["latency_sparse_ms"] = s["latency_b1_ms"]
        r["family"] = family(r)
        ps = r.get("param_sparsity")
        r["sparsity_pct"] = 100 * ps if is_num(ps) else None
    return runs


def _row(r: dict, method: str, fam: str, target: str, delta: tuple[str, str]) -> list:
    """One run's cells, in COLUMNS order."""

    def v(key):
        return r[key] if is_num(r.get(key)) else MISSING

    return [
        *(r["model"], r["dataset"], method, fam, target),
        *(v("sparsity_pct"), v("test_acc1"), v("acc1_before_finetune"), *delta),
        *(v("gmacs"), v("nz_gmacs"), v("latency_b1_ms"), v("latency_sparse_ms")),
    ]


def sparsity_table(
    run_metrics: list[str],
    run_latency: list[str],
    backend: str = "eager",
    dense_metrics: list[str] | None = None,
    dense_latency: list[str] | None = None,
) -> pd.DataFrame:
    """Structured and unstructured runs in one table, mean ± std over seeds.

    Args:
        run_metrics, run_latency: the compression runs' metrics.json and latency.json.
        backend: the main latency backend (report.latency_backend); the sparse kernel's
            latency (``sparse_csr``) has its own column.
        dense_metrics, dense_latency: the dense models' files; each (model, dataset) then
            gets a "dense" reference row.

    Returns:
        One row per (model, dataset, method, target); ``attrs`` hold title and conventions.
    """
    runs = _read(run_metrics, run_latency, backend)
    paired = paired_to_reference(runs)
    runs.sort(key=lambda r: (r["model"], r["dataset"], r["target"], r["family"], r["method"]))
    dense = _read(dense_metrics or [], dense_latency, backend)
    rows = [_row(d, "dense", "—", "—", ("—", "—")) for d in dense]
    for r in runs:
        m = METHODS.find(r["method"])
        key = (r["dataset"], r["model"], r["target"], r["method"])
        delta = paired_cells(paired.get(key), r["method"] == REFERENCE)
        label = m.label if m else r["method"]
        rows.append(_row(r, label, r["family"], axis(r["target"], r["family"]), delta))
    raw = pd.DataFrame(rows, columns=COLUMNS)
    raw = raw.sort_values(["Model", "Dataset"], kind="stable")  # dense first in each block
    table = aggregate_seeds(raw, KEYS)
    table.attrs["title"] = (
        f"Structured and unstructured methods (latency: {backend} and {SPARSE_BACKEND})"
    )
    table.attrs["conventions"] = [
        "Target = the nominal ratio on the method's own axis: −x% MACs for structured methods "
        "(filters and layers removed until the model has x% fewer MACs than the dense one), "
        "x% sparsity for unstructured ones (x% of the prunable weights, conv and linear weight "
        "tensors, set to zero; shapes unchanged).",
        "Param sparsity = percent of the dense model's prunable weights that the model no "
        "longer has as non-zero values (zeroed or removed): the axis both families share.",
        "Acc@1 = top-1 on the test split, percent, mean ± sample std over seeds; Acc@1 before "
        "FT = after the last recovery, before the final fine-tune.",
        "Δ vs IDAP++ = mean over seeds of the paired difference in test Acc@1 (method minus "
        "IDAP++ on the same seed, split, dense model and data stream) at the same nominal "
        "target, with its 95% t-interval (* = it excludes 0): an unstructured method at x% "
        "sparsity is paired with IDAP++ at −x% MACs, structured methods at the same ratio on "
        "their MAC axis. McNemar p<0.05 = seeds where an exact McNemar test on the same test "
        "images finds the two models' errors different.",
        GMACS_CONVENTION + ": a dense-kernel count, zero weights included. Non-zero GMACs = "
        "only the multiply-accumulates whose weight is non-zero (what a kernel skipping zeros "
        "could at best save); equal to GMACs for a structured model.",
        f"Latency b1 = median ms per image, batch 1, fp32, backend {backend} "
        "(report.latency_backend), an ordinary dense kernel; Latency b1 sparse kernel = the "
        f"same with backend {SPARSE_BACKEND} (CSR weights, CPU sparse kernel); {MISSING} where "
        "not timed.",
        "dense = each seed's uncompressed model.",
    ]
    return table


def sparsity_plot(
    run_metrics: list[str],
    run_latency: list[str],
    out_png: str,
    backend: str = "eager",
    dense_metrics: list[str] | None = None,
    dense_latency: list[str] | None = None,
) -> None:
    """Per (model, dataset), two panels: Acc@1 against parameter sparsity, and Acc@1 against
    batch-1 latency (``backend`` filled markers, the sparse kernel hollow ones). Structured
    methods are circles on solid lines, unstructured ones triangles on dashed lines; error
    bars are the 95% t-interval over seeds; the dense model's Acc@1 is a dotted line."""
    runs = _read(run_metrics, run_latency, backend)
    dense = _read(dense_metrics or [], dense_latency, backend)
    blocks = sorted({(r["model"], r["dataset"]) for r in runs})
    fig, axes = plt.subplots(
        max(len(blocks), 1), 2, figsize=(11, 4.2 * max(len(blocks), 1)), squeeze=False
    )
    ylabel = "test Acc@1 (%), mean and 95% interval over seeds"
    for (model, dataset), (ax_s, ax_l) in zip(blocks, axes, strict=False):
        mine = [r for r in runs if (r["model"], r["dataset"]) == (model, dataset)]
        series = method_series(mine, ("sparsity_pct", "latency_b1_ms", "latency_sparse_ms"))
        for i, (m, s) in enumerate(series.items()):
            sparse = next(r for r in mine if r["method"] == m)["family"] == UNSTRUCTURED
            kw = dict(
                color=f"C{i % 10}",
                marker="^" if sparse else "o",
                linestyle="--" if sparse else "-",
                capsize=3,
            )
            ax_s.errorbar(s["sparsity_pct"], s["acc"], yerr=s["err"], label=m, **kw)
            ax_l.errorbar(s["latency_b1_ms"], s["acc"], yerr=s["err"], label=m, **kw)
            if not np.isnan(s["latency_sparse_ms"]).all():
                ax_l.errorbar(
                    s["latency_sparse_ms"],
                    s["acc"],
                    yerr=s["err"],
                    label=f"{m} ({SPARSE_BACKEND})",
                    mfc="none",
                    alpha=0.7,
                    **kw,
                )
        ref = method_series(
            [d for d in dense if (d["model"], d["dataset"]) == (model, dataset)],
            ("latency_b1_ms",),
        ).get("dense")
        if ref:  # a line across both panels, and a star where the dense model's latency is
            for ax in (ax_s, ax_l):
                ax.axhline(ref["acc"][0], color="k", ls=":", lw=1, label="dense")
            ax_l.plot(ref["latency_b1_ms"], ref["acc"], "k*", ms=12)
        title = f"{model} on {dataset}"
        ax_s.set(xlabel="parameter sparsity (% of prunable weights)", ylabel=ylabel, title=title)
        ax_l.set(
            xlabel=f"latency, batch 1 (ms, median; filled: {backend}, hollow: {SPARSE_BACKEND})",
            ylabel=ylabel,
            title=title,
        )
        for ax in (ax_s, ax_l):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run(
    *,
    dense_metrics: list[str],
    run_metrics: list[str],
    dense_latency: list[str],
    run_latency: list[str],
    out_sparsity: str,
    out_plot: str,
    latency_backend: str,
) -> None:
    """Write the sparsity table (``out_sparsity`` a stem: .md, .csv, .tex) and the plot
    ``out_plot`` (report ``sparsity_report``)."""
    backend = latency_backend
    table = sparsity_table(run_metrics, run_latency, backend, dense_metrics, dense_latency)
    write_table(table, out_sparsity)
    sparsity_plot(run_metrics, run_latency, out_plot, backend, dense_metrics, dense_latency)
