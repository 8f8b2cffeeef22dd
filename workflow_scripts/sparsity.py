"""Rule `sparsity_report`: structured and unstructured methods on both axes (table and plot)."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "sparsity_report"):
    from idap.reporting import sparsity

    i, o = sm.input, sm.output
    sparsity.run(
        i.dense_metrics,
        i.run_metrics,
        i.dense_latency,
        i.run_latency,
        o.table,
        o.png,
        sm.params.backend,
    )
