"""Rule `pareto`: Acc@1 against GMACs and against latency, for one dataset and model."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "pareto"):
    from idap.reporting import compare

    i = sm.input
    compare.pareto_plot(
        i.dense_metrics,
        i.run_metrics,
        i.run_latency,
        i.dense_latency,
        sm.output.png,
        sm.params.backend,
    )
