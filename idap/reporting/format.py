"""Formatting shared by every table: missing values, seed aggregation, number display and
the Markdown / CSV / LaTeX writers."""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd
from tabulate import tabulate

from idap.core.io import atomic_path, read_json, write_text
from idap.engine.methods import METHODS
from idap.engine.stats import paired_interval

MISSING = "missing"
STRUCTURED, UNSTRUCTURED = "structured", "unstructured"
GMACS_CONVENTION = (
    "GMACs = multiply-accumulates per image at evaluation resolution, batch 1 "
    "(torch_pruning.utils.count_ops_and_params)"
)
# columns whose values can be far below 1 (tiny models): significant figures, not 2 decimals
_SIGNIFICANT = ("GMACs", "Params", "Dev.")


def value(x):
    """A JSON/CSV value, or MISSING for null/NaN (a missing value is never shown as 0)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return x


def is_num(x) -> bool:
    # numbers.Real also admits numpy scalars, which pandas hands back from numeric columns
    return isinstance(x, numbers.Real) and not isinstance(x, bool | np.bool_)


def load_dense(paths: list[str], what: str) -> dict[tuple, tuple[dict, str]]:
    """Dense files keyed by (dataset, model, seed): a run is compared with its own seed's."""
    dense: dict[tuple[str, str], tuple[dict, str]] = {}
    for p in paths:
        d = read_json(p)
        key = (d["dataset"], d["model"], d.get("seed", 0))
        if key in dense:
            raise ValueError(f"two dense {what} files for {key}: {dense[key][1]} and {p}")
        dense[key] = (d, p)
    return dense


def aggregate_seeds(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Collapse rows that share ``keys`` (one per seed) into mean ± std cells.

    A column is averaged only where every seed has a number; otherwise its cell reports
    how many seeds had one, so a missing run cannot pass for a complete mean.
    """
    out = []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key, strict=True))
        for c in df.columns:
            if c in keys:
                continue
            vals = [float(v) for v in g[c] if is_num(v)]
            if len(g) == 1:
                row[c] = g[c].iloc[0]
            elif not vals:  # a label every seed shares ("—": no such stage) stays as is
                row[c] = g[c].iloc[0] if g[c].astype(str).nunique() == 1 else MISSING
            else:
                m, sd = float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                cell = f"{num(m)} ± {num(sd)}"
                row[c] = cell if len(vals) == len(g) else f"{cell} ({len(vals)}/{len(g)} seeds)"
        row["Seeds"] = len(g)
        out.append(row)
    res = pd.DataFrame(out, columns=[*df.columns, "Seeds"])
    res.attrs.update(df.attrs)
    return res


def method_series(runs: list[dict], x_keys: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """Per method, one point per target (in target order) for the plots: the mean over seeds
    of each of ``x_keys`` (NaN where no seed has it), the mean test Acc@1 (``acc``) and the
    half-width of its 95% t-interval over seeds (``err``; 0 with one seed)."""
    out = {}
    for m in sorted({r["method"] for r in runs}):
        by_target: dict = {}
        for r in runs:
            if r["method"] == m:
                by_target.setdefault(r["target"], []).append(r)
        s: dict[str, list] = {k: [] for k in (*x_keys, "acc", "err")}
        for _t, rs in sorted(by_target.items()):
            mean, low, high = paired_interval(r["test_acc1"] for r in rs)
            s["acc"].append(mean)
            s["err"].append(0.0 if math.isnan(low) else (high - low) / 2)
            for k in x_keys:
                vals = [r[k] for r in rs if is_num(r.get(k))]
                s[k].append(float(np.mean(vals)) if vals else math.nan)
        out[m] = s
    return out


def num(x, significant: bool = True) -> str:
    """Two decimals; values below 1 keep 3 significant figures when ``significant``."""
    if not is_num(x):
        return str(x)
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if math.isnan(x):
        return MISSING
    if significant and x != 0 and abs(x) < 1:
        return f"{x:#.3g}"  # '#' keeps trailing zeros so a column reads evenly
    return f"{x:.2f}"


def _formatted(df: pd.DataFrame) -> list[list[str]]:
    sig = [any(k in c for k in _SIGNIFICANT) for c in df.columns]
    out = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v, s in zip(df.columns, row, sig, strict=True):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(MISSING)
            elif c == "Target" and is_num(v):
                cells.append(f"{v:g}")  # a requested ratio: show it as configured
            else:
                cells.append(num(v, s))
        out.append(cells)
    return out


_TEX = {
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
    "−": "--",
    "→": r"$\rightarrow$",
    "‖": r"$\|$",
    "z₀": r"$z_0$",
    "·": r"$\cdot$",
    "²": r"$^2$",
    "≥": r"$\geq$",
}


def _tex(s: str) -> str:
    # tabulate has already escaped LaTeX specials, so the inserted math stays raw
    for k, v in _TEX.items():
        s = s.replace(k, v)
    return s


def write_table(df: pd.DataFrame, stem: str) -> None:
    """Write ``stem.md``, ``stem.csv`` and ``stem.tex`` (atomically, parents created).

    The Markdown file starts with the table's title and conventions (``df.attrs``), then a
    GitHub pipe table; floats show 2 decimals (3 significant figures below 1 for GMACs,
    params, targets, deviations and ms, which are tiny for small models). The CSV keeps full
    precision; the LaTeX table uses booktabs. Missing values are written as "missing".
    """
    headers = [str(c) for c in df.columns]
    cells = _formatted(df)
    title = df.attrs.get("title")
    notes = df.attrs.get("conventions", [])
    lines = [f"### {title}", ""] if title else []
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    # numbers are pre-formatted strings: keep them verbatim, but align them to the right
    numeric = [
        all(_looks_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))
    ]
    align = ["right" if n else "left" for n in numeric]
    md = tabulate(
        cells, headers=headers, tablefmt="github", disable_numparse=True, colalign=align or None
    )
    # the blank line after the notes keeps Markdown from folding the table into the list
    write_text(f"{stem}.md", "\n".join(lines) + ("\n" if lines else "") + md + "\n")

    with atomic_path(f"{stem}.csv") as tmp:
        df.to_csv(tmp, index=False, na_rep=MISSING)

    tex = tabulate(
        cells,
        headers=headers,
        tablefmt="latex_booktabs",
        disable_numparse=True,
        colalign=align or None,
    )
    head = [f"% {title}"] if title else []
    head += [f"% {n}" for n in notes]
    write_text(f"{stem}.tex", "\n".join(head + [_tex(tex)]) + "\n")


def _looks_numeric(s: str) -> bool:
    try:
        float(s.split(" ± ")[0])
    except (ValueError, IndexError):
        return s == MISSING
    return True


def latency_b1(path: str | None, backend: str) -> float | None:
    """Median batch-1 fp32 latency of ``backend`` (files without backends: eager)."""
    if path is None:
        return None
    rec = read_json(path)
    for r in rec.get("results", []):
        if (
            r["batch_size"] == 1
            and r["dtype"] == "fp32"
            and r.get("backend", "eager") == backend
            and "error" not in r
        ):
            return r["latency_ms_median"]
    return None


def read_runs(
    run_metrics: list[str], run_latency: list[str] | None = None, backend: str = "eager"
) -> list[dict]:
    """Every run's metrics, each with the batch-1 latency of ``backend`` (``latency_b1_ms``,
    None where not timed)."""
    lat = {}
    for p in run_latency or []:
        r = read_json(p)
        lat[(r["dataset"], r["model"], r["method"], r["target"], r.get("seed", 0))] = p
    out = []
    for p in run_metrics:
        r = read_json(p)
        key = (r["dataset"], r["model"], r["method"], r["target"], r.get("seed", 0))
        r["latency_b1_ms"] = latency_b1(lat.get(key), backend)
        out.append(r)
    return out


def family(run: dict) -> str:
    """A run's family: from its metrics, else from the method registry."""
    if run.get("family"):
        return run["family"]
    m = METHODS.find(run["method"])
    return MISSING if m is None else UNSTRUCTURED if m.sparse else STRUCTURED
