# Helpers for every rule: config validation, output paths, input functions, params.
# Defines no rules. The grid's names are checked against a cached index of the registries
# (idap.core.names): planning imports torch only when that index or a target check is due.

import hashlib
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

from idap.core.codehash import code_hash as closure_hash
from idap.core.config import ConfigError, for_model, validate_config
from idap.core.names import lookup, name_index, use_index_methods
from idap.core.plugins import PluginError, plugin_files
from idap.engine.methods import get_method
from idap.stages.grid import check_grid
from idap.stages.registry import COMPRESSION_STAGES, STAGES, get_stage, job_settings

try:
    validate_config(config, plugins=False)
    # the registries' names (plugins included) from an index that is rebuilt, importing
    # torch and the plugins, only when the package or a plugin changed
    try:
        NAMES = name_index(config["plugins"])
    except PluginError as e:
        raise ConfigError(f"config: plugins: {e}") from None
    use_index_methods(NAMES)
    check_grid(config, lookup(NAMES))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

R = "results"
DATA_ROOT = config["data"]["root"]
GRID = config["grid"]


def _check_new_targets():
    """Runs the grid gained since a model's check_targets job ran are checked here, before
    any job: that job does not rerun on a grid change (rules/check_targets.smk)."""
    from idap.stages.plan import check_grid_targets

    for d in GRID["datasets"]:
        for m in GRID["models"]:
            try:
                check_grid_targets(config, d, m)
            except ValueError as e:
                raise WorkflowError(f"idap check_targets: error: {e}") from None


_check_new_targets()
SCRIPTS = Path(workflow.basedir) / "workflow_scripts"


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    seed=r"\d+",
    model=r"(timm:|tv:)?[A-Za-z0-9_.-]+",
    method=r"[a-z0-9_]+",
    target=r"0\.\d+",
    variant=r"dense|[a-z0-9_]+/r0\.\d+",


# -- the grid --------------------------------------------------------------------------
def runs():
    """(dataset, model, seed, method, target) of every compression run."""
    return [
        (d, m, s, meth, str(t))
        for d in GRID["datasets"]
        for m in GRID["models"]
        for s in GRID["seeds"]
        for meth in GRID["methods"]
        for t in GRID["targets"]
    ]


def dense_dirs(dataset=None, model=None):
    """Dense-model directories of the grid (optionally of one dataset and model)."""
    return [
        f"{R}/{d}/{m}/s{s}/dense"
        for d in GRID["datasets"]
        for m in GRID["models"]
        for s in GRID["seeds"]
        if dataset in (None, d) and model in (None, m)
    ]


def run_dirs(dataset=None, model=None):
    """Compression-run directories of the grid (optionally of one dataset and model)."""
    return [
        f"{R}/{d}/{m}/s{s}/{meth}/r{t}"
        for d, m, s, meth, t in runs()
        if dataset in (None, d) and model in (None, m)
    ]


def final_outputs():
    outs = [
        f"{R}/tables/main.md",
        f"{R}/tables/dynamics.md",
        f"{R}/tables/latency.md",
        f"{R}/plots/dynamics.png",
        f"{R}/tables/comparison.md",
        f"{R}/tables/cost.md",
    ]
    outs += [
        f"{R}/plots/pareto/{d}/{m}.png" for d in GRID["datasets"] for m in GRID["models"]
    ]
    if sum(1 for m in GRID["methods"] if get_method(m).ablation) >= 2:
        outs.append(f"{R}/tables/ablation.md")
    if config["prune"]["mode"] == "budget":
        outs.append(f"{R}/tables/budget.md")
    if config["report"]["tuning"]:
        outs += [f"{R}/tables/tuning.md", f"{R}/tuning/tuned.yaml"]
    if any(get_method(m).sparse for m in GRID["methods"]):
        outs += [f"{R}/tables/sparsity.md", f"{R}/plots/sparsity.png"]
    return outs


# -- params ----------------------------------------------------------------------------
def code_hash(script):
    """Hash of the idap modules a rule's script imports (its import closure, derived from the
    source), of the compression stages it runs (imported lazily by the orchestrator, so
    outside that closure) and of the config's plugins: editing a module reruns exactly the
    rules that run it and their descendants."""
    runs = STAGES[script].runs if script in STAGES else ()
    modules = tuple(COMPRESSION_STAGES[s].module for s in runs)
    h = hashlib.sha256(closure_hash(SCRIPTS / f"{script}.py", workflow.basedir, modules).encode())
    for path in plugin_files(config["plugins"]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def settings(stage):
    """Params function: JSON of the settings ``stage`` reads (idap.stages.registry; its CLI
    --settings), as the job's dataset, model and method see them (their overrides and the
    method's variant merged), with the plugins every job imports."""
    get_stage(stage)  # an unknown stage fails at parse time

    def get(wildcards):
        model = getattr(wildcards, "model", None)
        dataset = getattr(wildcards, "dataset", None)
        method = getattr(wildcards, "method", None)
        cfg = dict(for_model(config, model, dataset, method))
        if getattr(wildcards, "seed", None) is not None:
            cfg["seed"] = int(wildcards.seed)  # one run per entry of grid.seeds
        return json.dumps(job_settings(stage, cfg), sort_keys=True)

    return get


def gpus(device):
    return 0 if device == "cpu" else 1


# -- input functions -------------------------------------------------------------------
def dataset_manifest(wildcards):
    return f"{DATA_ROOT}/{wildcards.dataset}/manifest.json"


def exclusive_threads(wildcards):
    """All the cores Snakemake was given in a local run, so no other job shares the CPU with
    the one asking; 2 for a job submitted to a cluster, which asks for a node of its own
    (profiles/slurm: slurm_extra --exclusive)."""
    return workflow.cores if workflow.local_exec else 2


def model_for_variant(wildcards):
    base = f"{R}/{wildcards.dataset}/{wildcards.model}/s{wildcards.seed}/{wildcards.variant}"
    if wildcards.variant == "dense":
        return f"{base}/model.json"
    return f"{base}/finetune/model.json"


def run_dir(w):
    return f"{R}/{w.dataset}/{w.model}/s{w.seed}/{w.method}/r{w.target}"


def compressed_stage(wildcards):
    """The stage whose output the final fine-tune starts from: the method's last stage."""
    return f"{run_dir(wildcards)}/{get_method(wildcards.method).stages[-1]}"


def stage_inputs(stage):
    """Input function (use with unpack): the model a compression stage starts from, which
    is the dense model or the previous stage of the method's order (with its dynamics)."""

    def get(w):
        stages = get_method(w.method).stages
        if stage not in stages:
            raise WorkflowError(f"method {w.method} has no stage {stage}")
        i = stages.index(stage)
        dense = f"{R}/{w.dataset}/{w.model}/s{w.seed}/dense"
        prev = dense if i == 0 else f"{run_dir(w)}/{stages[i - 1]}"
        files = {
            "model": f"{prev}/model.json",
            "weights": f"{prev}/model.safetensors",
            "dense": f"{dense}/model.json",
        }
        if i > 0:
            files["dynamics"] = f"{prev}/dynamics.csv"
        return files

    return get


def variant_meta(wildcards):
    if wildcards.variant == "dense":
        meta = {"model": wildcards.model, "method": "dense", "target": None}
    else:
        method, target_dir = Path(wildcards.variant).parts
        meta = {"model": wildcards.model, "method": method, "target": float(target_dir[1:])}
    meta["dataset"] = wildcards.dataset
    meta["seed"] = int(wildcards.seed)
    return json.dumps(meta, sort_keys=True)
