# Helpers for every rule: config validation, output paths, input functions, params.
# Defines no rules. Nothing here imports torch, so planning the DAG stays fast.

import hashlib
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

from idap.config import ConfigError, for_model, validate_config
from idap.methods import get_method

try:
    validate_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

R = "results"
DATA_ROOT = config["data"]["root"]
GRID = config["grid"]
IDAP_DIR = Path(workflow.basedir) / "idap"


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    model=r"[a-z0-9_]+",
    method=r"[a-z0-9_]+",
    target=r"0\.\d+",
    variant=r"dense|[a-z0-9_]+/r0\.\d+",


# -- the grid --------------------------------------------------------------------------
def runs():
    """(dataset, model, method, target) of every compression run."""
    return [
        (d, m, meth, str(t))
        for d in GRID["datasets"]
        for m in GRID["models"]
        for meth in GRID["methods"]
        for t in GRID["targets"]
    ]


def dense_dirs():
    return [f"{R}/{d}/{m}/dense" for d in GRID["datasets"] for m in GRID["models"]]


def run_dirs():
    return [f"{R}/{d}/{m}/{meth}/r{t}" for d, m, meth, t in runs()]


def final_outputs():
    return [
        f"{R}/tables/main.md",
        f"{R}/tables/dynamics.md",
        f"{R}/tables/latency.md",
        f"{R}/plots/dynamics.png",
    ]


# -- params ----------------------------------------------------------------------------
# Modules each stage runs; their hash is a param, so editing a stage's code reruns that
# stage and its descendants (Snakemake's code trigger only sees a rule's own shell text).
_SHARED = ["__init__", "artifact", "config", "context", "datasets", "io", "models", "registry"]
STAGE_MODULES = {
    "download": ["datasets", "io", "registry"],
    "baseline": _SHARED + ["baseline", "train"],
    "evaluate": _SHARED + ["evaluate", "train", "pruning"],
    "prune_filters": _SHARED
    + ["prune_filters", "protocol", "pruning", "criteria", "scores", "schedule", "train", "methods"],
    "truncate_layers": _SHARED
    + ["truncate_layers", "protocol", "pruning", "criteria", "scores", "train", "methods"],
    "finetune": _SHARED + ["finetune", "protocol", "train"],
    "latency": _SHARED + ["latency"],
    "tables": ["tables", "io"],
    "plots": ["plots", "io"],
}


def code_hash(stage):
    h = hashlib.sha256()
    for mod in sorted(set(STAGE_MODULES[stage])):
        h.update((IDAP_DIR / f"{mod}.py").read_bytes())
    return h.hexdigest()[:16]


def settings(*sections):
    """Params function: JSON of the config sections a stage uses (its CLI --settings), as
    the job's model sees them (per-model ``overrides`` merged)."""

    def get(wildcards):
        model = getattr(wildcards, "model", None)
        cfg = for_model(config, model) if model else config
        return json.dumps({s: cfg[s] for s in sections}, sort_keys=True)

    return get


def gpus(device):
    return 0 if device == "cpu" else 1


# -- input functions -------------------------------------------------------------------
def dataset_manifest(wildcards):
    return f"{DATA_ROOT}/{wildcards.dataset}/manifest.json"


def model_for_variant(wildcards):
    base = f"{R}/{wildcards.dataset}/{wildcards.model}/{wildcards.variant}"
    if wildcards.variant == "dense":
        return f"{base}/model.json"
    return f"{base}/finetune/model.json"


def compressed_stage(wildcards):
    """The stage whose output the final fine-tune starts from (methods may skip stage 2)."""
    stage = "truncate_layers" if get_method(wildcards.method).truncate else "prune_filters"
    return f"{R}/{wildcards.dataset}/{wildcards.model}/{wildcards.method}/r{wildcards.target}/{stage}"


def variant_meta(wildcards):
    if wildcards.variant == "dense":
        meta = {"model": wildcards.model, "method": "dense", "target": None}
    else:
        method, target_dir = Path(wildcards.variant).parts
        meta = {"model": wildcards.model, "method": method, "target": float(target_dir[1:])}
    meta["dataset"] = wildcards.dataset
    return json.dumps(meta, sort_keys=True)
