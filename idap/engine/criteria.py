"""The registered criteria (divergence, torch-pruning's, VBP) and ``create_criterion``.

Each is a :class:`~idap.engine.criterion.Criterion`; callers never branch on which one.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from idap.engine import vbp  # noqa: F401  (registers "vbp")
from idap.engine.criterion import CRITERIA, Criterion
from idap.engine.scores import attention_modules, divergence_scores, head_scores

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


@CRITERIA.register("divergence")
class DivergenceImportance(Criterion):
    """IDAP++ information-flow divergence (docs/method.md §1), reduced over a coupled group.

    Args:
        normalize: "layer" divides each layer's scores by their mean before ranking (the
            default: layers differ by orders of magnitude); "none" keeps raw scores.
        group_reduction: "mean" or "sum" over the group's members that carry a score.
        size_factor: keep the 1/(C·H·W) factor (False for the IFAP variant).
    """

    needs_data = True

    def __init__(self, normalize: str = "layer", group_reduction: str = "mean", size_factor=True):
        if normalize not in ("layer", "none"):
            raise ValueError(f"normalize must be 'layer' or 'none', got {normalize!r}")
        if group_reduction not in ("mean", "sum"):
            raise ValueError(f"group_reduction must be 'mean' or 'sum', got {group_reduction!r}")
        self.normalize = normalize
        self.group_reduction = group_reduction
        self.size_factor = size_factor
        self.scores: dict[nn.Module, torch.Tensor] = {}
        self.head_scores: dict[str, torch.Tensor] = {}

    def _norm(self, s: torch.Tensor) -> torch.Tensor:
        return s / s.mean().clamp_min(1e-30) if self.normalize == "layer" else s

    def prepare(self, model, batches, DG, layers):
        batches = list(batches)
        raw = divergence_scores(model, batches, layers, DG, size_factor=self.size_factor)
        self.scores = {layers[name]: self._norm(s) for name, s in raw.items()}
        attns = attention_modules(model)
        heads = head_scores(model, batches, attns, size_factor=self.size_factor) if attns else {}
        self.head_scores = {n: self._norm(h) for n, h in heads.items()}

    def heads(self, model):
        return self.head_scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, n = None, 0
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if dep.handler not in _OUT_FNS or layer not in self.scores:
                continue
            s = self.scores[layer]
            width = layer.weight.shape[0]
            if len(s) != width:  # stale scores after pruning would silently misrank
                raise RuntimeError(f"stale divergence scores: {len(s)} for {width} units")
            root_idxs = group[i].root_idxs
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            total.scatter_add_(0, torch.as_tensor(root_idxs), s[torch.as_tensor(idxs)])
            n += 1
        if total is None:
            return None
        return total / n if self.group_reduction == "mean" else total


@CRITERIA.register("l1")
class L1Importance(Criterion):
    """torch-pruning's group L1 magnitude (mean over the group, mean-normalised per group)."""

    def __init__(self):
        self._imp = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean")

    def __call__(self, group):
        return self._imp(group)

    def heads(self, model):
        # L1 of each head's q, k and v rows, mean-normalised per layer like the channels
        out = {}
        for n, a in attention_modules(model).items():
            w = a.qkv.weight.detach().abs().double().cpu().view(3, a.num_heads, a.head_dim, -1)
            s = w.sum((0, 2, 3))
            out[n] = s / s.mean().clamp_min(1e-30)
        return out


class _TorchPruning(Criterion):
    """A torch-pruning importance used as is (the peers of docs/method.md §6)."""

    def __init__(self, imp: tp.importance.Importance):
        self._imp = imp

    def __call__(self, group):
        return self._imp(group)


@CRITERIA.register("l2")
class L2Importance(_TorchPruning):
    """Group L2 magnitude."""

    def __init__(self):
        super().__init__(tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"))


@CRITERIA.register("lamp")
class LAMPImportance(_TorchPruning):
    """Layer-adaptive magnitude (LAMP) scores."""

    def __init__(self):
        super().__init__(tp.importance.LAMPImportance(p=2))


@CRITERIA.register("fpgm")
class FPGMImportance(_TorchPruning):
    """Filter pruning via geometric median."""

    def __init__(self):
        super().__init__(tp.importance.FPGMImportance(p=2))


@CRITERIA.register("bn_scale")
class BNScaleImportance(_TorchPruning):
    """|gamma| of the BatchNorm following each channel (groups without BN are kept)."""

    scope = "channels followed by a BatchNorm"

    def __init__(self):
        super().__init__(tp.importance.BNScaleImportance())


@CRITERIA.register("random")
class RandomImportance(_TorchPruning):
    """Uniform random scores (torch's RNG, reseeded per step: reproducible)."""

    def __init__(self):
        super().__init__(tp.importance.RandomImportance())


@CRITERIA.register("taylor")
class TaylorImportance(_TorchPruning):
    """First-order Taylor |w · dL/dw| with gradients of the CE loss on the val batches."""

    needs_data = True
    needs_labels = True

    def __init__(self):
        super().__init__(tp.importance.GroupTaylorImportance())

    def prepare(self, model, batches, DG, layers):
        was = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            torch.nn.functional.cross_entropy(model(x), y.to(x.device)).backward()
        model.train(was)


def create_criterion(name: str, **kwargs) -> Criterion:
    return CRITERIA.get(name)(**kwargs)
