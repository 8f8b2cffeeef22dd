"""Report `tables`: main, dynamics and latency tables as Markdown, CSV and LaTeX.

Every number comes from a file the pipeline wrote; a value that cannot be found (no dense
model for a run, a null field) is shown as "missing" and never filled in. Each builder
stores its conventions in ``df.attrs`` so the Markdown file states them above the table.
"""

from __future__ import annotations

import pandas as pd

from idap.core.io import read_json
from idap.reporting.format import (
    GMACS_CONVENTION,
    MISSING,
    aggregate_seeds,
    is_num,
    load_dense,
    num,
    value,
    write_table,
)

_ID = ["Model", "Dataset", "Method", "Target"]


def main_table(dense_metrics: list[str], run_metrics: list[str]) -> pd.DataFrame:
    """One row per compressed run beside its dense model (matched by dataset and model).

    Args:
        dense_metrics: metrics JSON files of the dense baselines (method "dense").
        run_metrics: metrics JSON files of the compressed runs.

    Returns:
        Columns Model | Dataset | Method | Target | Acc@1 base | Acc@1 pruned | Δ pp |
        GMACs base | GMACs pruned | Δ% | Params base (M) | Params pruned (M) | Dev. mean |
        Dev. p95, in input order. Δ pp = pruned − base test Acc@1; Δ% = MAC reduction in
        percent (positive = fewer MACs). Cells without a source value hold "missing".
    """
    dense = load_dense(dense_metrics, "metrics")
    rows = []
    for p in run_metrics:
        r = read_json(p)
        base = dense.get((r["dataset"], r["model"], r.get("seed", 0)), (None, None))[0]
        row = {
            "Model": r["model"],
            "Dataset": r["dataset"],
            "Method": r["method"],
            "Target": value(r.get("target")),
        }
        b_acc = base.get("test_acc1") if base else None
        b_macs = base.get("gmacs") if base else None
        b_par = base.get("params_m") if base else None
        acc, macs = r.get("test_acc1"), r.get("gmacs")
        row["Acc@1 base"] = value(b_acc)
        row["Acc@1 pruned"] = value(acc)
        row["Δ pp"] = acc - b_acc if is_num(acc) and is_num(b_acc) else MISSING
        row["GMACs base"] = value(b_macs)
        row["GMACs pruned"] = value(macs)
        ok = is_num(macs) and is_num(b_macs) and b_macs > 0
        row["Δ%"] = 100.0 * (1.0 - macs / b_macs) if ok else MISSING
        row["Params base (M)"] = value(b_par)
        row["Params pruned (M)"] = value(r.get("params_m"))
        row["Dev. mean"] = value(r.get("deviation_mean"))
        row["Dev. p95"] = value(r.get("deviation_p95"))
        rows.append(row)
    df = pd.DataFrame(
        rows,
        columns=_ID
        + [
            "Acc@1 base",
            "Acc@1 pruned",
            "Δ pp",
            "GMACs base",
            "GMACs pruned",
            "Δ%",
            "Params base (M)",
            "Params pruned (M)",
            "Dev. mean",
            "Dev. p95",
        ],
    )
    df = aggregate_seeds(df, _ID)
    df.attrs["title"] = "Compressed runs beside their dense models"
    df.attrs["conventions"] = [
        "Acc@1 = top-1 accuracy on the test split, percent; Δ pp = pruned − base "
        "(percentage points).",
        GMACS_CONVENTION + "; Δ% = MAC reduction, 100·(1 − pruned/base), positive = fewer MACs.",
        "Params in millions. Dev. = output deviation ‖z₀ − z‖² / ‖z₀‖² against the dense "
        "model on the validation split (mean and 95th percentile over images).",
        f'Target = requested MAC reduction. "{MISSING}" = no source value (never filled in).',
        "Seeds = runs aggregated (each with its own split, dense model and compression); "
        "cells show mean ± sample std over them.",
    ]
    return df


_DYN_NUMERIC = {
    "params_m": "Params M",
    "gmacs": "GMACs",
    "val_acc1": "Acc@1 val",
    "test_acc1": "Acc@1 test",
    "test_acc5": "Acc@5",
}


def dynamics_table(runs: list[dict]) -> pd.DataFrame:
    """Per-step compression dynamics of every run, stacked.

    Args:
        runs: ``[{"dataset", "model", "method", "target", "path"}]``; ``path`` is the run's
            dynamics CSV (step, stage, params_m, gmacs, val_acc1, test_acc1, test_acc5,
            wall_s, val_drop, flagged, note).

    Returns:
        Columns Model | Dataset | Method | Target | Step | Stage | Params M | GMACs |
        Acc@1 val | Acc@1 test | Acc@5 | Flag | Note; one row per CSV row.
    """
    cols = _ID + ["Seed", "Step", "Stage", *_DYN_NUMERIC.values(), "Flag", "Note"]
    frames = []
    for run in runs:
        # read as text: an empty note is legitimately empty, not a missing number
        raw = pd.read_csv(run["path"], dtype=str, keep_default_na=False)
        out = pd.DataFrame(
            {
                "Model": run["model"],
                "Dataset": run["dataset"],
                "Method": run["method"],
                "Target": value(run.get("target")),
                "Seed": run.get("seed", 0),
                "Step": pd.to_numeric(raw["step"], errors="coerce").astype("Int64"),
                "Stage": raw["stage"],
            },
            index=raw.index,
        )
        for src, dst in _DYN_NUMERIC.items():
            out[dst] = pd.to_numeric(raw[src], errors="coerce")
        out["Flag"] = (
            raw["flagged"]
            .str.strip()
            .str.lower()
            .map({"true": "yes", "false": "", "1": "yes", "0": ""})
            .fillna(MISSING)
        )
        out["Note"] = raw["note"]
        frames.append(out)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = df.reindex(columns=cols).astype(object)
    df = df.where(df.notna(), MISSING)
    df.attrs["title"] = "Compression dynamics per step"
    df.attrs["conventions"] = [
        "Stages: baseline → filter (iterative filter pruning) → truncation (layer truncation) "
        "→ final (fine-tune). Validation Acc@1 drives every decision; test is reported only.",
        GMACS_CONVENTION + ". Params in millions; accuracies in percent.",
        "Flag = the validation drop from the dense model exceeded the allowed maximum.",
    ]
    return df


def _fmt_ms(r: dict | None) -> str:
    if r is None:
        return MISSING
    cell = f"{num(r['latency_ms_median'])} ± {num(r['latency_ms_iqr'])}"
    return f"noisy ({cell})" if r.get("noisy") else cell


def _setting(res: dict) -> tuple:
    return (res.get("backend", "eager"), res["batch_size"], res["dtype"])


def latency_table(dense_latency: list[str], run_latency: list[str]) -> pd.DataFrame:
    """Dense vs compressed latency per run and batch size (and precision when AMP is timed).

    Args:
        dense_latency: latency JSON files of the dense models.
        run_latency: latency JSON files of the compressed runs.

    Returns:
        Columns Model | Dataset | Method | Target | Device | Batch | Precision |
        Base ms (median ± IQR) | Pruned ms (median ± IQR) | Speed-up; speed-up = base
        median / pruned median, "missing" when the dense measurement is absent or was taken
        on another device.
    """
    dense = load_dense(dense_latency, "latency")
    rows = []
    for p in run_latency:
        r = read_json(p)
        base, _ = dense.get((r["dataset"], r["model"], r.get("seed", 0)), (None, None))
        # a speed-up is only meaningful against the dense model timed on the same device
        same = base is not None and base.get("device") == r.get("device")
        base_res = {_setting(x): x for x in base["results"]} if same else {}
        mac_ratio = (
            base["gmacs"] / r["gmacs"]
            if same and is_num(base.get("gmacs")) and is_num(r.get("gmacs")) and r["gmacs"] > 0
            else None
        )
        for res in r["results"]:
            b = base_res.get(_setting(res))
            if b is not None and "error" in b:
                b = None
            ok = b is not None and "error" not in res and res["latency_ms_median"] > 0
            speed = b["latency_ms_median"] / res["latency_ms_median"] if ok else MISSING
            if ok and (b.get("noisy") or res.get("noisy")):
                speed = "noisy"  # a ratio of medians that are not results is not one
            rows.append(
                {
                    "Model": r["model"],
                    "Dataset": r["dataset"],
                    "Method": r["method"],
                    "Target": value(r.get("target")),
                    "Device": r.get("device", MISSING),
                    "Backend": res.get("backend", "eager"),
                    "Batch": res["batch_size"],
                    "Precision": res["dtype"],
                    "Base ms (median ± IQR)": _fmt_ms(b),
                    "Pruned ms (median ± IQR)": (
                        f"failed: {res['error']}" if "error" in res else _fmt_ms(res)
                    ),
                    "Speed-up": speed,
                    "Speed-up ÷ MAC reduction": (
                        speed / mac_ratio
                        if mac_ratio and is_num(speed)
                        else "noisy"
                        if speed == "noisy"
                        else MISSING
                    ),
                }
            )
    df = pd.DataFrame(
        rows,
        columns=_ID
        + [
            "Device",
            "Backend",
            "Batch",
            "Precision",
            "Base ms (median ± IQR)",
            "Pruned ms (median ± IQR)",
            "Speed-up",
            "Speed-up ÷ MAC reduction",
        ],
    )
    df.attrs["title"] = "Inference latency, dense vs compressed"
    df.attrs["conventions"] = [
        "Latency per forward pass of one batch in ms: median ± IQR (q75 − q25) over single "
        "calls, each timed on its own (CUDA events on a GPU) after warm-up; eval mode, "
        "torch.inference_mode, input pre-allocated on the device; threads as recorded in "
        "latency.json.",
        "Speed-up = base median / pruned median (> 1 = compressed model faster), same device, "
        "backend, batch and precision. Precision fp32, or autocast amp-fp16 (CUDA) / amp-bf16 "
        "(CPU, eager only).",
        "Backends: eager PyTorch; compiled = BatchNorm folded, TorchScript freeze (or "
        "torch.compile); onnxruntime = ONNX export (BatchNorm folded) run by ONNX Runtime; "
        "each checked against eager before timing. A backend that could not run a model "
        "shows why ('failed: ...').",
        "Speed-up ÷ MAC reduction = speed-up / (base GMACs / pruned GMACs): the share of the "
        "MAC saving that turns into time (1 = all of it).",
        "noisy (median ± IQR) = the IQR exceeded latency.noise_share of the median (recorded "
        "in latency.json): the median is not read as a result, and speed-ups that use it "
        "read 'noisy'. Re-time such a model on an idle machine.",
    ]
    return df


def run(
    *,
    dense_metrics: list[str],
    run_metrics: list[str],
    dynamics: list[str],
    dense_latency: list[str],
    run_latency: list[str],
    out_main: str,
    out_dynamics: str,
    out_latency: str,
) -> None:
    """Build and write the main, dynamics and latency tables (report ``tables``; each
    ``out_*`` a stem: .md, .csv, .tex beside it).

    ``dynamics`` lists one CSV per entry of ``run_metrics``, same order; each run's identity
    (dataset, model, method, target) is read from its metrics file.
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
    write_table(main_table(dense_metrics, run_metrics), out_main)
    write_table(dynamics_table(runs), out_dynamics)
    write_table(latency_table(dense_latency, run_latency), out_latency)
