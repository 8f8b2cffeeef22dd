"""Rule `check_targets`: refuse an unreachable MAC target before the dense training."""

import json

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job, settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "check_targets"):
    from idap.stages import plan

    w = sm.wildcards
    runs = json.loads(sm.params.runs)
    plan.check_targets(w.dataset, w.model, runs, settings(sm), out=sm.output[0])
