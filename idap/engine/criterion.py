"""The criterion contract: ``prepare(model, batches, DG, layers)`` then ``__call__(group)``.

``__call__`` follows torch-pruning's ``Importance`` contract: a 1-D tensor indexed by the
group's root channels (``None`` to skip a group). Callers never branch on the criterion.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn

from idap.core.registry import Registry

CRITERIA = Registry("criterion")


class Criterion(tp.importance.Importance):
    """Base class: stateless criteria need not override ``prepare``."""

    needs_data = False
    needs_labels = False  # prepare() receives (x, y) pairs instead of inputs
    scope = "conv and linear output channels"  # what it scores, for error messages

    def prepare(
        self,
        model: nn.Module,
        batches: Iterable[torch.Tensor],
        DG: tp.DependencyGraph,
        layers: dict[str, nn.Module],
    ) -> None:
        """Compute what the criterion needs on the current model (scores go stale after pruning)."""

    def heads(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Score per attention head, keyed by attention module name ({} = heads not pruned)."""
        return {}

    def fold(
        self, model: nn.Module, DG: tp.DependencyGraph, removal: dict[tuple[str, str], list[int]]
    ) -> None:
        """Adjust ``model`` before ``removal`` ({(root, handler): idxs}) is cut (VBP mean fold)."""
