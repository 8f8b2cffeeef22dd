"""Rule `budget_search`: budget mode's search over whole runs, in one job."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job, settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "budget_search"):
    from idap.stages import jobs

    w = sm.wildcards
    jobs.run_search(
        dense=sm.input.dense,
        out_model=sm.output.model,
        out_dynamics=sm.output.dynamics,
        dataset=w.dataset,
        method=w.method,
        target=float(w.target),
        settings=settings(sm),
        threads=sm.threads,
    )
