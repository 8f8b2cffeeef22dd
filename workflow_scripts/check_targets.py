"""Rule `check_targets`: refuse an unreachable MAC target before the dense training."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "check_targets"):
    from idap.stages import plan

    w = sm.wildcards
    plan.check_grid_targets(sm.config, w.dataset, w.model, out=sm.output[0])
