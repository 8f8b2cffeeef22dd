"""Rule `plots`: accuracy and GMACs per compression step."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "plots"):
    from idap.reporting import plots

    plots.run(sm.input.run_metrics, sm.input.dynamics, sm.output.dynamics)
