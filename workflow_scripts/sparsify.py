"""Rule `sparsify`: one stage of a compression run, through idap's orchestrator."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "sparsify"):
    from idap.workflow.compress import run_workflow_job

    run_workflow_job(sm, "sparsify")
