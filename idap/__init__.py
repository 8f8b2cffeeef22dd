"""idap: a reproducible benchmark of structured pruning, built around IDAP++.

``idap.compress`` is loaded on first use, so importing the package (as the workflow does to
validate its config) does not import torch.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["compress"]


def __getattr__(name: str):
    if name == "compress":
        return importlib.import_module("idap.api").compress
    raise AttributeError(f"module 'idap' has no attribute {name!r}")
