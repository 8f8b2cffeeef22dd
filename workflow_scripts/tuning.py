"""Rule `tuning`: rank each method's variants on the tuning seeds; write the winner's config."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "tuning"):
    from idap.reporting import tuning

    p = sm.params
    tuning.run(
        sm.input.run_metrics, dict(p.variants), list(p.methods), sm.output.md, sm.output.tuned
    )
