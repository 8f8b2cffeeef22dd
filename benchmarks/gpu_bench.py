"""Throughput on a GPU: the workflow on a small config, once in fp32 and once with the job's
automatic precision (bf16 autocast + channels-last on CUDA), then the latency rule.

Prints, per precision, training images/s of the dense training and of the final fine-tune
(from their per-epoch log lines), evaluation wall time, the AMP speed-up, and the latency
table rows of the compressed and dense models. Asserts nothing; exits with one line where
no CUDA device is present.

    python benchmarks/gpu_bench.py [--model resnet_tiny] [--dataset fashion_mnist] [--cores 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
EPOCH = re.compile(r"\] epoch \d+/\d+ .* (\d+) img/s")


def _config(model: str, dataset: str, data_root: str, precision: str) -> dict:
    return {
        "device": "cuda",
        "precision": precision,
        "grid": {"datasets": [dataset], "models": [model], "methods": ["idap"], "targets": [0.5]},
        "data": {"root": data_root, "batch_size": 256, "eval_batch_size": 1024},
        "baseline": {"epochs": 3, "lr": 0.1},
        "prune": {"steps": 3, "recovery_iters": 50},
        "finetune": {"epochs": 2},
        "latency": {"device": "cuda", "backends": ["eager", "compiled"], "amp": True},
        "report": {"latency_backend": "compiled"},
    }


def _images_per_s(log: Path) -> float | None:
    rates = [float(m.group(1)) for m in EPOCH.finditer(log.read_text())] if log.exists() else []
    return statistics.median(rates) if rates else None


def _run(workdir: Path, cfg: dict, cores: int) -> dict:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir), "--cores", str(cores), "--resources", "gpu=1",
        "--configfile", str(path), "--quiet", "rules",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    g = cfg["grid"]
    d, m = g["datasets"][0], g["models"][0]
    logs = workdir / "logs" / d / m / "s0"
    run = workdir / f"results/{d}/{m}/s0/idap/r0.5"
    latency = json.loads((run / "latency.json").read_text())
    return {
        "baseline img/s": _images_per_s(logs / "dense/baseline.log"),
        "finetune img/s": _images_per_s(logs / "idap/r0.5/finetune.log"),
        "evaluate s": json.loads((run / "metrics.json").read_text())["wall_s"],
        "latency": latency["results"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet_tiny")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--data-root", default=str(ROOT / "resources/datasets"))
    ap.add_argument("--cores", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; run it on a GPU node")
        sys.exit(2)
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    runs = {}
    for precision in ("fp32", "auto"):
        with tempfile.TemporaryDirectory(prefix=f"idap-gpu-{precision}-") as wd:
            cfg = _config(args.model, args.dataset, args.data_root, precision)
            runs[precision] = _run(Path(wd), cfg, args.cores)
    rows = []
    for key in ("baseline img/s", "finetune img/s", "evaluate s"):
        a, b = runs["fp32"][key], runs["auto"][key]
        ratio = (b / a if "img/s" in key else a / b) if a and b else None
        rows.append([key, a, b, f"{ratio:.2f}x" if ratio else "missing"])
    print(tabulate(rows, headers=["", "fp32", "auto (bf16/fp16)", "speed-up"], floatfmt=".1f"))
    lat = [
        [r.get("backend"), r.get("batch_size"), r.get("amp"), r.get("latency_ms_median")]
        for r in runs["auto"]["latency"]
    ]
    print(tabulate(lat, headers=["backend", "batch", "amp", "median ms"], floatfmt=".3f"))


if __name__ == "__main__":
    main()
