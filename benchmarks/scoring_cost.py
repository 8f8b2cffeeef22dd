"""Cost of one divergence calibration pass vs a plain forward pass over the same batches.

Prints figures (goal: ratio <= 1.5x); asserts nothing. Run: `python benchmarks/scoring_cost.py`.
"""

from __future__ import annotations

import argparse
import time

import torch

from idap.engine.pruning import build_graph, prunable_layers
from idap.engine.scores import divergence_scores
from idap.models import create_model, get_spec


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet_tiny")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model(a.model, 10, a.in_chans).eval()
    batches = [torch.randn(a.batch_size, a.in_chans, a.size, a.size) for _ in range(a.batches)]
    layers = prunable_layers(model, set(get_spec(a.model).classifier))
    DG = build_graph(model, batches[0])

    @torch.no_grad()
    def plain():
        for x in batches:
            model(x)

    t_plain = _time(plain, a.repeats)
    t_score = _time(lambda: divergence_scores(model, batches, layers, DG), a.repeats)
    print(
        f"model {a.model}, {a.batches} batches x {a.batch_size} at {a.size}px, "
        f"{len(layers)} scored layers, {a.threads} threads, best of {a.repeats}"
    )
    print(f"plain forward pass      {1000 * t_plain:9.1f} ms")
    print(f"divergence calibration  {1000 * t_score:9.1f} ms")
    print(f"ratio                   {t_score / t_plain:9.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    main()
