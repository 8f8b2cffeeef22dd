"""Latency of a small CNN under the pipeline's protocol (``idap.stages.latency.measure_latency``).

Builds torchvision's resnet18 (random init, 10 classes) at 32x32 input and prints median,
IQR and throughput per batch size. It reports figures only and asserts nothing.

    python benchmarks/latency_bench.py --device cpu --batch-sizes 1 64
"""

from __future__ import annotations

import argparse

import torch
from tabulate import tabulate
from torchvision.models import resnet18

from idap.stages.latency import measure_latency


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--min-run-time", type=float, default=0.25, help="seconds per round")
    p.add_argument("--rounds", type=int, default=10, help="rounds per setting")
    p.add_argument("--amp", action="store_true", help="also time under autocast")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backends", nargs="+", default=["eager"], help="forms of the model to time")
    a = p.parse_args(argv)

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    rec = measure_latency(
        model,
        (3, 32, 32),
        batch_sizes=a.batch_sizes,
        device=a.device,
        amp=a.amp,
        warmup=a.warmup,
        min_run_time=a.min_run_time,
        threads=a.threads,
        rounds=a.rounds,
        backends=a.backends,
    )
    print(
        f"resnet18 (10 classes, 3x32x32) on {rec['device']}; torch {rec['torch']}, "
        f"threads {rec['threads']}, cuda {rec['cuda']}, cudnn {rec['cudnn']}, "
        f"tf32 matmul/cudnn {rec['tf32_matmul']}/{rec['tf32_cudnn']}"
    )
    rows = [
        [
            r["batch_size"],
            r["dtype"],
            r["latency_ms_median"],
            r["latency_ms_iqr"],
            r["latency_ms_mean"],
            r["latency_ms_std"],
            r["runs"],
            r["throughput_ips"],
        ]
        for r in rec["results"]
    ]
    print(
        tabulate(
            rows,
            headers=[
                "batch",
                "dtype",
                "median ms",
                "IQR ms",
                "mean ms",
                "std ms",
                "runs",
                "images/s",
            ],
            floatfmt=".3f",
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
