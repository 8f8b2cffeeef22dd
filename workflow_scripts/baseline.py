"""Rule `baseline`: train the dense model."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job, settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "baseline"):
    from idap.stages import baseline

    w = sm.wildcards
    baseline.run(w.dataset, w.model, sm.output.model, sm.output.log, settings(sm), sm.threads)
