"""Repeatability of the latency rule: run it twice on the same models and compare.

Runs ``snakemake --forcerun latency`` ``--runs`` times (default 2; the rest of the workflow
must be up to date), keeps every set of ``latency.json`` files and prints, per model and
batch size, the first two runs' medians with their IQRs, whether each median lies inside
the other run's IQR (the strict reading of "agree within their IQR") and whether the two
IQRs overlap (the loose one), then one summary line per pair of consecutive runs. It
reports figures only and asserts nothing; run it on an otherwise idle machine.

    python benchmarks/latency_repeat.py [--runs 4] [--configfile config/config.yaml] [--cores 2]
        [--directory RUN_DIR]

A median "agrees" when the two runs differ by at most the record's ``noise_share`` (the
share of the median beyond which the latency table calls a timing noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate


def _snapshot(results: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(results)): json.loads(p.read_text())
        for p in results.rglob("latency.json")
    }


ROOT = Path(__file__).resolve().parents[1]


def _run_rule(cores: int, configfile: str | None, directory: str) -> None:
    cmd = ["snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", directory]
    cmd += ["--cores", str(cores), "--forcerun", "latency", "--quiet", "rules"]
    if configfile:
        cmd += ["--configfile", configfile]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)


def _fmt(r: dict) -> str:
    return f"{r['latency_ms_median']:.3f} [{r['latency_ms_q25']:.3f}, {r['latency_ms_q75']:.3f}]"


def _inside(m: float, r: dict) -> bool:
    return r["latency_ms_q25"] <= m <= r["latency_ms_q75"]


def _compare(first: dict, second: dict) -> list[dict]:
    """One entry per (model, backend, batch, dtype) present in both snapshots."""
    out = []
    for path in sorted(first):
        if path not in second:
            continue
        for r1, r2 in zip(first[path]["results"], second[path]["results"], strict=True):
            if "error" in r1 or "error" in r2:  # a backend that could not run this model
                continue
            m1, m2 = r1["latency_ms_median"], r2["latency_ms_median"]
            lo = max(r1["latency_ms_q25"], r2["latency_ms_q25"])
            out.append(
                {
                    "run": path.removesuffix("/latency.json"),
                    "r1": r1,
                    "r2": r2,
                    "change": 100 * (m2 / m1 - 1),
                    "share": first[path]["noise_share"],
                    "inside": _inside(m1, r2) and _inside(m2, r1),
                    "overlap": lo <= min(r1["latency_ms_q75"], r2["latency_ms_q75"]),
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default=None)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--directory", default=".", help="the run's working directory")
    p.add_argument(
        "--runs", type=int, default=2, help="times to run the rule; consecutive runs are compared"
    )
    a = p.parse_args(argv)
    if a.runs < 2:
        p.error(f"--runs must be at least 2, got {a.runs}")
    runs = []
    for _ in range(a.runs):
        _run_rule(a.cores, a.configfile, a.directory)
        runs.append(_snapshot(Path(a.directory) / "results"))
    if not runs[0]:
        print("no latency.json under", Path(a.directory) / "results")
        return
    print(f"device: {runs[0][next(iter(runs[0]))]['device']}")
    pairs = [_compare(runs[i], runs[i + 1]) for i in range(a.runs - 1)]
    rows = [
        [
            c["run"],
            c["r1"].get("backend", "eager"),
            c["r1"]["batch_size"],
            c["r1"]["dtype"],
            _fmt(c["r1"]),
            _fmt(c["r2"]),
            f"{c['change']:+.1f}%",
            "yes" if c["inside"] else "no",
            "yes" if c["overlap"] else "no",
        ]
        for c in pairs[0]
    ]
    headers = [
        "run",
        "backend",
        "batch",
        "dtype",
        "run 1 median [q25, q75] ms",
        "run 2 median [q25, q75] ms",
    ]
    headers += ["change", "median in other IQR", "IQRs overlap"]
    print(tabulate(rows, headers=headers))
    summary = [
        [
            f"{i + 1} vs {i + 2}",
            f"{sum(c['inside'] for c in pair)}/{len(pair)}",
            f"{sum(c['overlap'] for c in pair)}/{len(pair)}",
            f"{max(abs(c['change']) for c in pair):.1f}%",
            f"{sum(abs(c['change']) for c in pair) / len(pair):.1f}%",
            f"{sum(abs(c['change']) <= 100 * c['share'] for c in pair)}/{len(pair)}",
        ]
        for i, pair in enumerate(pairs)
        if pair
    ]
    print()
    print(
        tabulate(
            summary,
            headers=[
                "runs",
                "each median in the other's IQR",
                "IQRs overlap",
                "largest change",
                "mean |change|",
                "within the noise share",
            ],
        )
    )


if __name__ == "__main__":
    main()
