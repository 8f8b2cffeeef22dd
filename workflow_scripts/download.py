"""Rule `download`: make one dataset available under the data root."""

import _checkout  # noqa: F401  (this checkout's idap first)

from idap.workflow import job, settings

sm = snakemake  # noqa: F821  (injected by Snakemake's script directive)
with job(sm, "download"):
    from idap.stages import download

    print(download.run(sm.wildcards.dataset, settings(sm)))
