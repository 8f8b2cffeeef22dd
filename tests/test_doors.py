"""One pipeline behind every door: for every registered method, ``idap.compress`` and the
Snakemake workflow (one job per stage, artifacts saved and reloaded in between) produce the
same record (stages in order, removed channels, replaced blocks), the same budget in every
job and bit-identical weights, under settings that differ from the schema's defaults
(``finetune.epochs`` 2, and 0 for IDAP++ on its own)."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SNAKEMAKE_CORES, over_default

import idap
from idap.core.config import for_model, validate_config
from idap.core.settings import SECTIONS, Settings
from idap.data import load_data
from idap.engine.methods import get_method, list_methods
from idap.models.artifact import load_model, read_record

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# vbp scores transformer MLP units: it runs on the tiny ViT, every other method on a CNN;
# MLP units alone cannot remove half of the ViT's MACs
MODEL_OF = {m: ("vit_tiny" if m == "vbp" else "resnet_micro") for m in list_methods()}
TARGET = {"resnet_micro": 0.5, "vit_tiny": 0.2}
TINY = {
    "seed": 0,
    "data": {"batch_size": 64, "eval_batch_size": 256, "val_fraction": 0.15},
    "baseline": {"epochs": 1, "lr": 0.05},
    "prune": {
        "steps": 2,
        "calib_batches": 2,
        "bn_recalib_batches": 2,
        "recovery_iters": 2,
        "mac_tolerance": 0.05,
    },
    "truncate": {"recovery_iters": 2, "block_tolerance": 100.0, "max_added_drop": 100.0},
    "finetune": {"epochs": 2},  # not the schema's default: every job must be given it
    # the workflow's base config (config/config.yaml) has its own vit_tiny overrides: the
    # test's settings restated over them, so both models run this tiny protocol
    "overrides": {
        "vit_tiny": {
            "baseline": {"epochs": 1, "optimizer": "adamw", "lr": 0.002},
            "prune": {"steps": 2, "recovery_iters": 2, "bn_recalib_batches": 0},
            "truncate": {"recovery_iters": 2},
            "finetune": {"epochs": 2},
        }
    },
}
KEYS = ("step", "stage", "params_m", "gmacs", "val_acc1", "test_acc1", "test_acc5", "note")


# (name, model, target, methods, sections over TINY): every method on its model, and IDAP++
# again with no fine-tune epochs (its truncation trials and gap steps then use the whole
# budget), at a target of its own so that its run has a path of its own
GRIDS = [
    *(
        (model, model, t, [m for m, a in MODEL_OF.items() if a == model], {})
        for model, t in TARGET.items()
    ),
    ("ft0", "resnet_micro", 0.4, ["idap"], {"finetune": {"epochs": 0}}),
]
CASES = [(model, t, m, extra) for _g, model, t, methods, extra in GRIDS for m in methods]
IDS = [f"{g}-{m}" for g, _model, _t, methods, _extra in GRIDS for m in methods]


def _run_dir(wd: Path, model: str, method: str, target: float) -> Path:
    return wd / f"results/digits/{model}/s0/{method}/r{target}"


@pytest.fixture(scope="module")
def workflow_runs(tmp_path_factory):
    """Every grid's finetune outputs through the workflow: one working directory (one
    download, one dense model per architecture), one invocation per grid, each asking for
    its own runs' final models only."""
    wd = tmp_path_factory.mktemp("doors")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH="/usr/bin:/bin", HF_HUB_OFFLINE="1")  # no idap on PATH
    for name, model, target, methods, extra in GRIDS:
        cfg = {**TINY, **extra, "grid": {"datasets": ["digits"], "models": [model]}}
        cfg["grid"].update(methods=methods, targets=[target])
        path = wd / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        targets = [  # relative to the working directory, as rules write them
            str((_run_dir(wd, model, m, target) / "finetune/model.json").relative_to(wd))
            for m in methods
        ]
        res = subprocess.run(
            [str(SNAKEMAKE), *targets, "--snakefile", str(ROOT / "Snakefile")]
            + ["--directory", str(wd), *SNAKEMAKE_CORES, "--configfile", str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=wd,
        )
        assert res.returncode == 0, res.stderr[-4000:]
    return wd


def _dynamics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: row[k] for k in KEYS} for row in csv.DictReader(f)]


def _api_rows(rows: list[dict]) -> list[dict]:
    """The API's rows as the workflow's CSV writes them (same columns, same text)."""
    return [{k: str(r[k]) for k in KEYS} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("model,target,method,extra", CASES, ids=IDS)
def test_api_and_workflow_agree(workflow_runs, model, target, method, extra):
    wd = workflow_runs
    run = _run_dir(wd, model, method, target)
    dense_path = wd / f"results/digits/{model}/s0/dense/model.json"
    dense, rec = load_model(dense_path)
    cfg = {**TINY, **extra, "data": {**TINY["data"], "root": str(wd / "resources/datasets")}}
    # as the job saw it: the test's config over the workflow's base config, then the model's
    merged = for_model(validate_config(over_default(copy.deepcopy(cfg))), model)
    assert merged["finetune"]["epochs"] != 1  # the schema's default would hide the defect
    data = load_data("digits", Settings.from_config(merged).data, 0, rec.get("input_size"))
    torch.set_num_threads(1)  # as many threads as the workflow's jobs had
    small, api = idap.compress(
        dense,
        data.splits.train,
        data.splits.val,
        target,
        method=method,
        test_loader=data.splits.test,
        arch=model,
        settings={s: merged[s] for s in SECTIONS},
    )
    flow = read_record(run / "finetune/model.json")
    for stage in flow["stages"]:  # every job computed the run's budget as the API did
        assert read_record(run / stage / "model.json")["budget"] == api["budget"], stage
    p, epochs = merged["prune"], merged["finetune"]["epochs"]  # the config's, not a default
    assert (
        api["budget"] == p["steps"] * p["recovery_iters"] + epochs * data.train_stream().per_epoch
    )
    # the stages the method registry states, then the fine-tune, through both doors
    assert api["stages"] == flow["stages"] == [*get_method(method).stages, "finetune"]
    assert api["edits"] == flow["edits"]
    assert api["replaced"] == flow["replaced"]
    assert _api_rows(api["rows"]) == _dynamics(run / "finetune/dynamics.csv")
    flow_model, _ = load_model(run / "finetune/model.json")
    for (ka, va), (kb, vb) in zip(
        small.state_dict().items(), flow_model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va.cpu(), vb), ka
