"""Report `tuning`: choose a method's free settings on seeds that are never reported.

A method and its variants (config ``variants``) run on tuning seeds; they are ranked by the
validation Acc@1 of their final models, the split every decision of the protocol uses (the
test split is not read here). The winner is written as a config defining ``<method>_tuned``,
to pass beside the reporting config; it records the seeds it was chosen on, and a grid that
reports one of them is refused (:func:`idap.stages.grid.check_grid`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from idap.core.config import VARIANT_KEYS
from idap.core.io import read_json, write_text
from idap.engine.methods import candidates, get_method
from idap.reporting.format import MISSING, is_num, write_table

TUNED = "{}_tuned"


def _changes(spec: dict | None) -> str:
    if not spec:
        return "defaults"
    items = [
        f"{section}.{key}={value}"
        for section, values in spec.items()
        if section not in VARIANT_KEYS
        for key, value in values.items()
    ]
    return ", ".join(items) or "defaults"


def tuning_table(
    run_metrics: list[str], variants: dict, methods: list[str]
) -> tuple[pd.DataFrame, dict]:
    """Rank each method's candidates by validation Acc@1.

    Returns:
        (table, tuned) where the table has one row per candidate (its changed settings, val
        Acc@1 per target and its mean over every (dataset, model, target, seed) all of the
        method's candidates finished, the difference to the defaults, the choice), and
        ``tuned`` maps ``<method>_tuned`` to the winner's variant entry (ties go to the
        defaults, then to the earlier candidate).

    Raises:
        ValueError: a method has no (dataset, model, target, seed) that all its candidates
            finished.
    """
    runs = [read_json(p) for p in run_metrics]
    val = {
        (r["dataset"], r["model"], r["target"], r.get("seed", 0), r["method"]): r.get("val_acc1")
        for r in runs
    }
    rows, tuned = [], {}
    for base, names in candidates(variants, methods).items():
        groups = sorted({k[:4] for k in val if k[4] in names})
        done = [g for g in groups if all(is_num(val.get((*g, n))) for n in names)]
        if not done:
            raise ValueError(
                f"tuning: no (dataset, model, target, seed) where every candidate of {base!r} "
                f"finished ({', '.join(names)})"
            )
        mean = {n: float(np.mean([val[(*g, n)] for g in done])) for n in names}
        best = max(names, key=lambda n: (mean[n], n == base, -names.index(n)))
        targets = sorted({g[2] for g in done})
        seeds = sorted({int(g[3]) for g in done})
        for n in names:
            row = {"Method": base, "Candidate": n, "Settings": _changes(variants.get(n))}
            for t in targets:
                row[f"Val Acc@1 @{100 * float(t):g}%"] = float(
                    np.mean([val[(*g, n)] for g in done if g[2] == t])
                )
            row["Mean val Acc@1"] = mean[n]
            row["Δ vs defaults"] = mean[n] - mean[base]
            row["Chosen"] = "←" if n == best else ""
            rows.append(row)
        spec = {k: v for k, v in (variants.get(best) or {}).items() if k not in ("label",)}
        spec.update(method=base, tuned_on_seeds=seeds)
        spec["label"] = f"{get_method(base).label} (tuned: {best})"
        tuned[TUNED.format(base)] = spec
    df = pd.DataFrame(rows).fillna(MISSING)
    df.attrs["title"] = "Tuning on seeds that are not reported (validation Acc@1)"
    df.attrs["conventions"] = [
        "Val Acc@1 = top-1 of the final model on the validation hold-out (the split every "
        "decision uses), percent; the test split is not read. Mean over the (dataset, model, "
        "seed) runs of that target; Mean val Acc@1 over every target as well.",
        "Only (dataset, model, target, seed) that every candidate of the method finished "
        "count; Δ vs defaults = candidate minus the method with its default settings.",
        "Chosen = the highest mean (ties go to the defaults); written as <method>_tuned to "
        "results/tuning/tuned.yaml with the seeds it was chosen on. Pass that file beside a "
        "reporting config whose grid leaves those seeds out.",
    ]
    return df, tuned


def run(
    *,
    run_metrics: list[str],
    out_tuning: str,
    out_tuned: str,
    variants: dict,
    methods: list[str],
) -> None:
    """Rank each of ``methods`` against its ``variants`` (report ``tuning``): write the table
    (``out_tuning`` a stem: .md, .csv, .tex) and the tuned config ``out_tuned``."""
    table, chosen = tuning_table(run_metrics, dict(variants), list(methods))
    write_table(table, out_tuning)
    seeds = sorted({s for spec in chosen.values() for s in spec["tuned_on_seeds"]})
    head = (
        f"# Chosen by idap's tuning table on seed(s) {seeds} by validation Acc@1; pass it\n"
        "# beside a reporting config whose grid.seeds leave those out, e.g.\n"
        "#   snakemake --cores 2 --configfile config/compare_tuned.yaml "
        "results/tuning/tuned.yaml\n"
    )
    write_text(out_tuned, head + yaml.safe_dump({"variants": chosen}, sort_keys=False))
