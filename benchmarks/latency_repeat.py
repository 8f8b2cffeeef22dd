"""Repeatability of the latency rule: run it twice on the same models and compare.

Runs ``snakemake --forcerun latency`` twice (the rest of the workflow must be up to date),
keeps both sets of ``latency.json`` files and prints, per model and batch size, the two
medians with their IQRs, whether each median lies inside the other run's IQR (the strict
reading of "agree within their IQR") and whether the two IQRs overlap (the loose one). It
reports figures only and asserts nothing; run it on an otherwise idle machine.

    python benchmarks/latency_repeat.py [--configfile config/config.yaml] [--cores 2]
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


def _run_rule(cores: int, configfile: str | None) -> None:
    cmd = ["snakemake", "--cores", str(cores), "--forcerun", "latency", "--quiet", "rules"]
    if configfile:
        cmd += ["--configfile", configfile]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)


def _fmt(r: dict) -> str:
    return f"{r['latency_ms_median']:.3f} [{r['latency_ms_q25']:.3f}, {r['latency_ms_q75']:.3f}]"


def _inside(m: float, r: dict) -> bool:
    return r["latency_ms_q25"] <= m <= r["latency_ms_q75"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default=None)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--results", default="results")
    a = p.parse_args(argv)
    runs = []
    for _ in range(2):
        _run_rule(a.cores, a.configfile)
        runs.append(_snapshot(Path(a.results)))
    rows, agree, overlap = [], 0, 0
    for path in sorted(runs[0]):
        first, second = runs[0][path], runs[1].get(path)
        if second is None:
            continue
        for r1, r2 in zip(first["results"], second["results"], strict=True):
            ok = _inside(r1["latency_ms_median"], r2) and _inside(r2["latency_ms_median"], r1)
            agree += ok
            meet = max(r1["latency_ms_q25"], r2["latency_ms_q25"]) <= min(
                r1["latency_ms_q75"], r2["latency_ms_q75"]
            )
            overlap += meet
            rows.append(
                [
                    path.removesuffix("/latency.json"),
                    r1["batch_size"],
                    r1["dtype"],
                    _fmt(r1),
                    _fmt(r2),
                    f"{100 * (r2['latency_ms_median'] / r1['latency_ms_median'] - 1):+.1f}%",
                    "yes" if ok else "no",
                    "yes" if meet else "no",
                ]
            )
    print(f"device: {runs[0][next(iter(runs[0]))]['device']}" if runs[0] else "no latency.json")
    print(
        tabulate(
            rows,
            headers=[
                "run",
                "batch",
                "dtype",
                "run 1 median [q25, q75] ms",
                "run 2 median [q25, q75] ms",
                "change",
                "median in other IQR",
                "IQRs overlap",
            ],
        )
    )
    print(f"{agree}/{len(rows)} settings: each median inside the other run's IQR")
    print(f"{overlap}/{len(rows)} settings: the two IQRs overlap")


if __name__ == "__main__":
    main()
