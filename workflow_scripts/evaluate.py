"""Rule `evaluate`: the metrics file of one model (dense or compressed)."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job, meta, settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "evaluate"):
    from idap.stages import evaluate

    i = sm.input
    evaluate.run(
        i.model,
        sm.output.metrics,
        sm.wildcards.dataset,
        settings(sm),
        i.dense,
        meta(sm),
        sm.threads,
    )
