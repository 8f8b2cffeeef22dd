"""Rule `latency`: time one model (median and IQR per batch size)."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job, meta, settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "latency"):
    from idap.stages import latency

    latency.run(
        sm.input.model,
        sm.output.latency,
        settings(sm).latency,
        meta(sm),
        sm.threads,
        onnx_out=sm.output.onnx,
    )
