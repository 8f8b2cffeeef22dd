"""Every stage a job runs, declared once: the settings it reads, where its code lives, its seed.

Torch-free, so the workflow's planner reads it at every invocation. What follows from it:

- a rule passes its job exactly the ``reads`` of its stage (``rules/common.smk``), and a job
  that reads anything else fails naming it (:meth:`idap.core.settings.Settings.for_job`);
- the orchestrator imports a compression stage's module only when it runs that stage, so a
  rule's code hash covers its own stage and the shared engine, not every stage;
- each compression stage reseeds from its fixed ``seed_id``, never from a position in a list.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# What every job that loads data and a model reads (the runtime and the data stream).
_RUNTIME = ("seed", "device", "precision", "channels_last", "data")
# A compression job computes the run's post-dense budget (docs/method.md §2): the recoveries
# (prune) and the final fine-tune's epochs alike, whichever stage it runs. A read is a whole
# section or one key of it ("finetune.epochs": editing finetune.lr reruns the fine-tune only).
_COMPRESSION = (*_RUNTIME, "prune", "finetune.epochs")


@dataclass(frozen=True)
class Stage:
    """One stage of the workflow.

    Attributes:
        name: the rule, the workflow script and the CLI command of the same name.
        reads: the settings (top-level scalars and sections) the stage may read; a job gets
            these and nothing else.
        module: for a compression stage, the module whose ``stage(state, ctx)`` runs it.
        seed_id: for a compression stage, its fixed random stream (a stage reseeds with it
            so a fresh process and an in-memory run draw the same numbers).
        runs: the compression stages whose code the job executes (its code hash covers them).
    """

    name: str
    reads: tuple[str, ...]
    module: str | None = None
    seed_id: int | None = None
    runs: tuple[str, ...] = ()

    @property
    def compression(self) -> bool:
        return self.module is not None

    def function(self):
        """The stage function, imported on first use."""
        if self.module is None:
            raise ValueError(f"stage {self.name} is not a compression stage")
        return importlib.import_module(self.module).stage


def _compression(name: str, seed_id: int, *extra: str) -> Stage:
    return Stage(name, (*_COMPRESSION, *extra), f"idap.stages.{name}", seed_id, (name,))


FINAL_STAGE = "finetune"
# The seed ids are the positions these stages had when the ids were introduced, so the
# numbers every run draws did not change with them.
COMPRESSION_STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        _compression("prune_filters", 0),
        _compression("truncate_layers", 1, "truncate"),
        _compression(FINAL_STAGE, 2, "finetune"),
        _compression("sparsify", 3, "sparse"),
    )
}


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """The reads of several stages; a whole section covers its keys."""
    reads = dict.fromkeys(k for g in groups for k in g)
    return tuple(k for k in reads if k.partition(".")[0] == k or k.partition(".")[0] not in reads)


def job_settings(stage: str, config: dict) -> dict:
    """What ``stage``'s job is given: its reads cut from ``config`` (validated whole, merged
    for the job's dataset, model and method), with the plugins every job imports."""
    out: dict = {"plugins": config["plugins"]}
    for read in get_stage(stage).reads:
        section, _, key = read.partition(".")
        if key:
            out.setdefault(section, {})[key] = config[section][key]
        else:
            out[read] = config[read]
    return out


STAGES: dict[str, Stage] = {
    **{
        s.name: s
        for s in (
            Stage("download", ("data",)),
            Stage("baseline", (*_RUNTIME, "baseline")),
            Stage("evaluate", _RUNTIME),
            Stage("latency", ("latency",)),
        )
    },
    **COMPRESSION_STAGES,
    # budget mode: whole runs of the method (any of its stages) inside one job
    "budget_search": Stage(
        "budget_search",
        _union(*(s.reads for s in COMPRESSION_STAGES.values())),
        runs=tuple(COMPRESSION_STAGES),
    ),
}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}") from None
