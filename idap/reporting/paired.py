"""Paired differences between methods run on the same seeds (same split, dense model and
data stream): the comparison and ablation tables both report them against IDAP++."""

from __future__ import annotations

import math

from idap.engine.stats import discordant, mcnemar_exact, paired_interval, unpack_bits
from idap.reporting.format import MISSING, is_num

REFERENCE = "idap"  # paired differences are taken against this method


def paired_to_reference(runs: list[dict], reference: str = REFERENCE) -> dict[tuple, dict]:
    """Per (dataset, model, target, method): the paired difference of test Acc@1 to the
    reference method over the seeds both ran (mean and 95% t-interval), and how many of
    those seeds an exact McNemar test on the same test images finds significant (p < 0.05).
    """
    by = {(r["dataset"], r["model"], r["target"], r["method"], r.get("seed", 0)): r for r in runs}
    out = {}
    for (d, m, t, meth, seed), r in by.items():
        ref = by.get((d, m, t, reference, seed))
        if meth == reference or ref is None:
            continue
        entry = out.setdefault((d, m, t, meth), {"diffs": [], "tests": []})
        if is_num(r.get("test_acc1")) and is_num(ref.get("test_acc1")):
            entry["diffs"].append(r["test_acc1"] - ref["test_acc1"])
        if r.get("test_correct") and ref.get("test_correct"):
            n = int(r["test_images"])
            b, c_ = discordant(
                unpack_bits(r["test_correct"], n), unpack_bits(ref["test_correct"], n)
            )
            entry["tests"].append(mcnemar_exact(b, c_))
    for entry in out.values():
        entry["mean"], entry["low"], entry["high"] = paired_interval(entry["diffs"])
    return out


def paired_cells(entry: dict | None, is_reference: bool) -> tuple[str, str]:
    """(difference cell, McNemar cell): "+0.12 [-0.30, +0.54]" (* when the interval
    excludes 0) and "k/n" seeds with p < 0.05; "—" for the reference itself."""
    if is_reference:
        return "—", "—"
    if entry is None or not entry["diffs"]:
        return MISSING, MISSING
    mean, low, high = entry["mean"], entry["low"], entry["high"]
    if math.isnan(low):
        diff = f"{mean:+.2f} (1 seed)"
    else:
        mark = " *" if low > 0 or high < 0 else ""
        diff = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"
    tests = entry["tests"]
    sig = f"{sum(p < 0.05 for p in tests)}/{len(tests)}" if tests else MISSING
    return diff, sig
