"""Same config, same seed, CPU: two runs of the pipeline give identical results.

baseline -> prune_filters -> finetune -> evaluate run in-process twice into two directories;
the metrics files must be equal except for wall-clock timings, and so must the weights and
the dynamics logs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from idap.core.config import validate_config
from idap.core.settings import Settings
from idap.data import prepare_dataset
from idap.stages import baseline, evaluate, jobs

TIMING_KEYS = {"wall_s", "compress_wall_s"}


def pipeline(out: Path, cfg: dict) -> dict:
    """Run every stage of one compression run into ``out``; return the metrics."""
    settings = Settings.from_config(cfg)
    dense = out / "dense/model.json"
    baseline.run("digits", "resnet_micro", str(dense), str(out / "dense/log.json"), settings)
    prev, dynamics_in = dense, None
    for stage in ("prune_filters", "finetune"):
        path = out / f"idap/{stage}/model.json"
        jobs.run_stage(
            stage,
            model=str(prev),
            dense=str(dense),
            out_model=str(path),
            out_dynamics=str(path.with_name("dynamics.csv")),
            dataset="digits",
            method="idap",
            target=0.5,
            settings=settings,
            dynamics_in=dynamics_in,
        )
        prev, dynamics_in = path, str(path.with_name("dynamics.csv"))
    meta = {"model": "resnet_micro", "method": "idap", "target": 0.5}
    return evaluate.run(
        str(prev), str(out / "idap/metrics.json"), "digits", settings, str(dense), meta
    )


def dynamics_without_timing(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; and a busy CI box punishes more threads
    try:
        yield _two_runs(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _two_runs(tmp_path_factory):
    wd = tmp_path_factory.mktemp("determinism")
    cfg = validate_config(
        {
            "seed": 3,
            "device": "cpu",
            "data": {"root": str(wd / "data"), "batch_size": 64, "eval_batch_size": 256},
            "baseline": {"epochs": 1, "lr": 0.05},
            "prune": {"steps": 2, "calib_batches": 2, "bn_recalib_batches": 2, "recovery_iters": 3},
            "finetune": {"epochs": 1},
        }
    )
    prepare_dataset("digits", cfg["data"]["root"])
    return [(wd / run, pipeline(wd / run, cfg)) for run in ("a", "b")]


def test_metrics_identical_except_timing(two_runs):
    (dir_a, _), (dir_b, _) = two_runs
    files = [json.loads((d / "idap/metrics.json").read_text()) for d in (dir_a, dir_b)]
    a, b = ({k: v for k, v in m.items() if k not in TIMING_KEYS} for m in files)
    assert a == b
    assert TIMING_KEYS <= set(files[0])  # the exclusion hides nothing else
    assert a["test_acc1"] > 0 and a["deviation_mean"] is not None


def test_weights_and_dynamics_identical(two_runs):
    (dir_a, _), (dir_b, _) = two_runs
    for stage in ("dense", "idap/prune_filters", "idap/finetune"):
        wa, wb = (d / stage / "model.safetensors" for d in (dir_a, dir_b))
        assert wa.read_bytes() == wb.read_bytes(), stage
    for stage in ("idap/prune_filters", "idap/finetune"):
        da, db = (dynamics_without_timing(d / stage / "dynamics.csv") for d in (dir_a, dir_b))
        assert da == db, stage
