"""idap: IDAP++ structured pruning as a reproducible benchmark."""

__version__ = "0.1.0"
