"""What unstructured sparsity buys on a CPU: eager vs the ``sparse_csr`` backend.

Zeroes a random fraction of every conv and linear weight of ``resnet_tiny`` (1x28x28 input)
and prints the median batch-1 and batch-64 latency of eager PyTorch and of the same model
with CSR weights (``idap.models.deploy``), timed by ``idap.stages.latency.measure_latency``
on one thread. sparse_csr also folds BatchNorm, so its 0% row is the folded dense model,
the reference its sparse rows should beat. It reports figures only and asserts nothing
(about 15 s).

    python benchmarks/sparse_kernel_bench.py --sparsity 0 0.5 0.8 0.95
"""

from __future__ import annotations

import argparse

import torch
from tabulate import tabulate
from torch import nn

from idap.models import create_model
from idap.stages.latency import measure_latency


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.95])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--min-run-time", type=float, default=0.15, help="seconds per round")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)

    rows = []
    for sparsity in a.sparsity:
        torch.manual_seed(0)
        model = create_model("resnet_tiny", 10, 1)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.data[torch.rand(m.weight.shape) < sparsity] = 0
        rec = measure_latency(
            model,
            (1, 28, 28),
            batch_sizes=a.batch_sizes,
            warmup=5,
            min_run_time=a.min_run_time,
            rounds=a.rounds,
            threads=1,
            backends=("eager", "sparse_csr"),
        )
        ms = {(r["backend"], r["batch_size"]): r.get("latency_ms_median") for r in rec["results"]}
        info = rec["backends"]["sparse_csr"]
        for b in a.batch_sizes:
            eager, sparse = ms[("eager", b)], ms[("sparse_csr", b)]
            rows.append(
                [
                    f"{sparsity:.0%}",
                    b,
                    f"{info.get('sparse_layers', '-')}/{info.get('dense_layers', '-')}",
                    f"{info.get('density', 1.0):.2f}",
                    eager,
                    sparse if sparse is not None else info.get("error"),
                    eager / sparse if sparse else None,
                ]
            )
    print(f"{rec['device']}, torch {rec['torch']}, {rec['threads']} thread(s)")
    head = "sparsity batch sparse/dense_layers density eager_ms sparse_csr_ms speed-up"
    print(tabulate(rows, head.split(), floatfmt=".3f"))


if __name__ == "__main__":
    main()
