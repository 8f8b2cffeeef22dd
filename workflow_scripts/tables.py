"""Rule `tables`: main, dynamics and latency tables (.md, .csv, .tex)."""

import os

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "tables"):
    from idap.reporting import tables

    i = sm.input
    tables.run(
        i.dense_metrics,
        i.run_metrics,
        i.dynamics,
        i.dense_latency,
        i.run_latency,
        os.path.dirname(sm.output.main),
    )
