"""Rule `ablation`: the ablation table of the IDAP++ variants."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "ablation"):
    from idap.reporting import ablation

    ablation.run(sm.input.dense_metrics, sm.input.run_metrics, sm.output.md)
