"""idap: IDAP++ structured pruning as a reproducible benchmark."""

__version__ = "0.1.0"


def compress(*args, **kwargs):
    """Compress a model with IDAP++ or a peer; see :func:`idap.api.compress`."""
    from .api import compress as _compress

    return _compress(*args, **kwargs)
