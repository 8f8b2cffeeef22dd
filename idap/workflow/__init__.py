"""The workflow door: what a ``workflow_scripts/`` adapter needs from a Snakemake job.

Each rule runs a script (Snakemake's ``script:``) with the interpreter that runs Snakemake,
so no job depends on ``idap`` being on PATH. :func:`job` sends the job's output to its log
and turns a failure into one line naming the stage, as the CLI does.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import traceback
from collections.abc import Iterator

from idap.core.errors import one_line
from idap.core.name_cache import cached_index, use_index_methods
from idap.core.plugins import load_plugins
from idap.core.settings import Settings
from idap.engine.methods import register_variants


@contextlib.contextmanager
def job(snakemake, stage: str, *, import_plugins: bool = True) -> Iterator[None]:
    """Run the body with stdout and stderr (file descriptors too: torch and tqdm write there)
    in the job's log; on an error, write ``idap <stage>: error: <one line>`` to the log and
    to Snakemake's console and fail the job (``IDAP_DEBUG=1`` adds the traceback).

    A job that reads only the methods' declarations (a report: labels, stages, which are
    sparse) passes ``import_plugins=False``: it takes the plugins' methods from the planner's
    name index (:mod:`idap.core.names`) where that is cached, instead of importing the
    plugins, whose torch import would be most of its time."""
    plugins = snakemake.config.get("plugins", ())
    index = None if import_plugins else cached_index(plugins)
    if index is None:  # (nothing cached where this job looks: import them after all)
        load_plugins(plugins)  # a variant may vary a plugin's method
    else:
        use_index_methods(index)
    register_variants(snakemake.config.get("variants", {}))  # the grid's method names
    log = snakemake.log[0] if len(snakemake.log) else os.devnull
    console = os.fdopen(os.dup(2), "w")
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        except Exception as e:
            if os.environ.get("IDAP_DEBUG"):
                traceback.print_exc()
            msg = f"idap {stage}: error: {one_line(e)}"
            print(msg, file=sys.stderr, flush=True)
            print(msg, file=console, flush=True)
            raise SystemExit(1) from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            console.close()
    # Done, outputs closed, and the script ends here: keep the interpreter's exit from
    # collecting the ~400 000 objects torch's imports made (cyclic collections only; objects
    # are still freed by reference counting). That is ~0.8 s of a small job's ~4 s.
    gc.freeze()


def settings(snakemake) -> Settings:
    """The job's typed settings, from the rule's ``settings`` param: JSON of what its stage
    reads (``idap.stages.registry``), the job's overrides and variant already merged. Any
    other setting raises when read."""
    return Settings.for_job(json.loads(snakemake.params.settings), snakemake.rule)


def meta(snakemake) -> dict:
    return json.loads(snakemake.params.meta)
