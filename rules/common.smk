# Helpers for every rule: config validation, output paths, input functions, params.
# Defines no rules. The grid's names are checked against a cached index of the registries
# (idap.core.names): planning imports torch only when that index or a target check is due.

import hashlib
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from idap.core.codehash import code_hash as closure_hash
from idap.core.config import ConfigError, for_model, validate_config
from idap.core.names import lookup, name_index, use_index_methods
from idap.core.plugins import PluginError, plugin_files
from idap.engine.methods import get_method
from idap.reporting.registry import REPORTS, RESULTS, final_files, input_files
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

R = RESULTS  # stage outputs here; the reports' paths are in idap.reporting.registry
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


# -- reports (idap.reporting.registry) -------------------------------------------------
def final_outputs():
    """Every file of every report the config calls for."""
    return final_files(config, get_method)


def report_inputs(entry):
    """A report rule's named inputs: each input kind's files of the grid (a per-model
    report's: input functions of its dataset and model wildcards)."""
    if not entry.per_model:
        return {kind: input_files(kind, GRID) for kind in entry.inputs}
    return {
        kind: lambda w, kind=kind: input_files(kind, GRID, w.dataset, w.model)
        for kind in entry.inputs
    }


def report_outputs(entry):
    """A report rule's named outputs: a table as one multiext, a plot or file as itself;
    one with a category goes into ``snakemake --report`` (a table by its .md)."""
    outs = {}
    for o in entry.outputs:
        files = multiext(o.path, *o.exts) if o.exts else [o.path]
        if o.category:
            caption = f"../report/{o.caption}" if o.caption else None
            files[0] = report(files[0], caption, o.category, o.subcategory)
        outs[o.name] = files if o.exts else files[0]
    return outs


def report_log(entry):
    if entry.per_model:
        return f"logs/{entry.name}/{{dataset}}/{{model}}.log"
    return f"logs/{entry.name}.log"


# -- params ----------------------------------------------------------------------------
def code_hash(script, *modules):
    """Hash of the idap modules a rule's script imports (its import closure, derived from the
    source), of the compression stages it runs and of ``modules`` (a report's builder; both
    imported lazily, so outside that closure) and of the config's plugins: editing a module
    reruns exactly the rules that run it and their descendants."""
    runs = STAGES[script].runs if script in STAGES else ()
    modules = (*modules, *(COMPRESSION_STAGES[s].module for s in runs))
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
    (slurm_extra: EXCLUSIVE_NODE). --max-threads caps it (see below)."""
    return workflow.cores if workflow.local_exec else 2


_MAX_THREADS = workflow.resource_settings.max_threads
if workflow.local_exec and _MAX_THREADS and _MAX_THREADS < workflow.cores:
    logger.warning(
        f"--max-threads {_MAX_THREADS} < --cores {workflow.cores}: timing jobs (latency, and "
        "compression under prune.target_kind latency) get at most that many cores, so other "
        "jobs can run beside them and their timings are shared; time without --max-threads"
    )


# sbatch's flag for a node of its own: a timing job's slurm_extra on SLURM, as
# exclusive_threads is its local counterpart (a site that forbids it overrides the rule's
# slurm_extra in its profile: docs/cluster.md)
EXCLUSIVE_NODE = "--exclusive"


def _times_probes(wildcards) -> bool:
    prune = for_model(config, wildcards.model, wildcards.dataset, wildcards.method)["prune"]
    return prune["target_kind"] == "latency"


def compression_threads(wildcards):
    """2, or every local core for a job whose search times its probes (prune.target_kind
    latency): a probe timed beside another job would measure that job too."""
    return exclusive_threads(wildcards) if _times_probes(wildcards) else 2


def compression_slurm_extra(wildcards):
    """A node of its own on SLURM for a job whose search times its probes; none otherwise."""
    return EXCLUSIVE_NODE if _times_probes(wildcards) else ""


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
