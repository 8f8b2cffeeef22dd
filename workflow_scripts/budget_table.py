"""Rule `budget_table`: budget mode's table (largest reduction within max_drop)."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "budget_table"):
    from idap.reporting import budget

    i = sm.input
    out = sm.output[0].removesuffix(".md")
    budget.run(i.dense_metrics, i.run_metrics, i.run_latency, out, sm.params.backend)
