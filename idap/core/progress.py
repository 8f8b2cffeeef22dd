"""Progress bars on a terminal only: a job's log gets one line per epoch instead of
carriage-return noise."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, total: int | None = None, desc: str = ""):
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        mininterval=2.0,
        dynamic_ncols=True,
        disable=not sys.stderr.isatty(),
    )
