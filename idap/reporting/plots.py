"""Report `plots`: compression dynamics (accuracy and GMACs per step) of every run."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless cluster nodes have no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from idap.core.io import atomic_path, read_json  # noqa: E402

# marker per stage: where a run switches from filter pruning to truncation to fine-tune
_STAGE_MARKERS = {"baseline": "o", "filter": ".", "sparse": "+", "truncation": "s", "final": "*"}
_DEFAULT_MARKER = "x"


def _label(run: dict) -> str:
    t = run.get("target")
    label = run["method"] if t is None else f"{run['method']} r={float(t):g}"
    return label if run.get("seed") in (None, 0) else f"{label} s{run['seed']}"


def _read(path: str) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"stage": str, "note": str}, keep_default_na=False)
    for c in ("step", "gmacs", "val_acc1", "test_acc1"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df[df["stage"] != "probe"]  # budget mode's probes are whole runs, not steps
    return df.sort_values("step", kind="stable")


def _draw_run(ax, ax2, df: pd.DataFrame, color, label: str) -> None:
    x = df["step"]
    ax.plot(x, df["val_acc1"], color=color, ls="-", lw=1.4)
    ax.plot(x, df["test_acc1"], color=color, ls="--", lw=1.0)
    ax2.plot(x, df["gmacs"], color=color, ls=":", lw=1.2)
    for stage, part in df.groupby("stage", sort=False):
        m = _STAGE_MARKERS.get(stage, _DEFAULT_MARKER)
        ax.scatter(part["step"], part["val_acc1"], marker=m, color=color, s=28, zorder=3)
        ax2.scatter(part["step"], part["gmacs"], marker=m, color=color, s=16, alpha=0.6)
    # dotted verticals where the stage changes: the first step of each new stage
    prev = df["stage"].shift()
    changes = df["step"][(df["stage"] != prev) & prev.notna()]
    for s in changes:
        ax.axvline(s, color=color, ls=":", lw=0.6, alpha=0.5)
    ax.plot([], [], color=color, lw=6, label=label)  # legend entry for the run's colour


def plot_dynamics(runs: list[dict], out_png: str) -> None:
    """Plot Acc@1 (val and test) and GMACs per compression step, one panel per model.

    Args:
        runs: ``[{"dataset", "model", "method", "target", "path"}]`` as for
            :func:`idap.reporting.tables.dynamics_table`; ``path`` is the run's dynamics CSV.
        out_png: output PNG path (written atomically, parent created).

    Each (dataset, model) gets a panel: left axis val Acc@1 (solid) and test Acc@1
    (dashed), right axis GMACs (dotted); one colour per method/target; markers show the
    stage and dotted verticals mark stage changes.
    """
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        panels.setdefault((r["dataset"], r["model"]), []).append(r)
    n = max(len(panels), 1)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(7.5 * ncols, 4.6 * nrows), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("tab10")
    try:
        for ax, ((dataset, model), prs) in zip(axes.flat, panels.items(), strict=False):
            ax2 = ax.twinx()
            for i, r in enumerate(prs):
                _draw_run(ax, ax2, _read(r["path"]), cmap(i % 10), _label(r))
            ax.set_title(f"{model} on {dataset}")
            ax.set_xlabel("compression step")
            ax.set_ylabel("Acc@1 (%)")
            ax2.set_ylabel("GMACs (per image, batch 1)")
            ax.grid(alpha=0.3)
            style = [
                Line2D([], [], color="k", ls="-", label="val Acc@1"),
                Line2D([], [], color="k", ls="--", label="test Acc@1"),
                Line2D([], [], color="k", ls=":", label="GMACs (right)"),
            ]
            stages = [
                Line2D([], [], color="k", ls="", marker=m, label=s)
                for s, m in _STAGE_MARKERS.items()
            ]
            handles, _ = ax.get_legend_handles_labels()
            ax.legend(handles=handles + style + stages, fontsize=7, loc="lower left", ncols=2)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_axis_off()
        if not panels:
            axes.flat[0].text(0.5, 0.5, "no runs", ha="center", va="center")
        fig.suptitle("Compression dynamics: Acc@1 and GMACs per step")
        with atomic_path(out_png) as tmp:
            # the temp name has no .png suffix, so the format must be explicit
            fig.savefig(tmp, format="png", dpi=130)
    finally:
        plt.close(fig)


def run(*, run_metrics: list[str], dynamics: list[str], out_dynamics: str) -> None:
    """Plot every run's dynamics into ``out_dynamics`` (report ``plots``).

    ``dynamics`` lists one CSV per entry of ``run_metrics``, same order; each run's identity
    is read from its metrics file.
    """
    if len(dynamics) != len(run_metrics):
        raise ValueError(
            f"{len(dynamics)} dynamics files for {len(run_metrics)} runs; "
            "pass one per run, same order"
        )
    runs = []
    for m, d in zip(run_metrics, dynamics, strict=True):
        r = read_json(m)
        ident = ("dataset", "model", "method", "target", "seed")
        runs.append({k: r.get(k) for k in ident} | {"path": d})
    plot_dynamics(runs, out_dynamics)
