"""The workflow door for the compression stages (prune_filters, truncate_layers, finetune)."""

from __future__ import annotations

from idap.stages import jobs
from idap.workflow import settings


def run_workflow_job(snakemake, stage: str) -> dict:
    """:func:`idap.stages.jobs.run_stage` with a Snakemake job's wildcards, inputs, outputs
    and params."""
    w, i, o = snakemake.wildcards, snakemake.input, snakemake.output
    return jobs.run_stage(
        stage,
        model=i.model,
        dense=i.dense,
        out_model=o.model,
        out_dynamics=o.dynamics,
        dataset=w.dataset,
        method=w.method,
        target=float(w.target),
        settings=settings(snakemake),
        dynamics_in=i.get("dynamics"),
        threads=snakemake.threads,
    )
