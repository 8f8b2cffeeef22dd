"""Rule `compare`: the comparison (methods x targets) and cost tables."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "compare"):
    from idap.reporting import compare

    i, o = sm.input, sm.output
    compare.run(
        i.dense_metrics,
        i.run_metrics,
        i.dense_latency,
        i.run_latency,
        o.comparison,
        o.cost,
        o.runs,
        sm.params.backend,
        sm.params.reference,
    )
