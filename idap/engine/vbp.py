"""VBP (Variance-Based Pruning, docs/method.md §6) and its CNN adaptation, VBP-CNN (ours).

A unit is scored by the variance of its post-activation signal, measured where the next
layer reads it (the consumer's input); removing a low-variance unit loses little once its
mean is folded into the consumer: ``b2 += W2[:, pruned] · μ_pruned``. A consumer without
bias absorbs the fold in the running mean of the BatchNorm that follows it. The fold is
exact for linear consumers and 1×1 convs; a k×k conv with zero padding differs at the
border (the constant would have been padded with zeros there).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from idap.engine.criterion import CRITERIA, Criterion
from idap.engine.scores import calibration_pass

_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


class _Welford:
    """Per-channel mean and variance in float64, merged batch by batch (Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, x: torch.Tensor) -> None:  # x: (samples, channels)
        x = x.detach().double()
        nb = x.shape[0]
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta**2 * self.n * nb / n
        self.n = n

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / max(self.n, 1)


def _channels_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A consumer's input as (samples, in-channels)."""
    if isinstance(module, nn.Conv2d):
        return x.transpose(1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def _following_bn(DG: tp.DependencyGraph, module: nn.Module) -> nn.Module | None:
    node = DG.module2node.get(module)
    outs = [] if node is None else [o.module for o in node.outputs]
    if len(outs) == 1 and isinstance(outs[0], nn.modules.batchnorm._BatchNorm):
        return outs[0]
    return None


def _absorbs_fold(DG: tp.DependencyGraph, consumer: nn.Module) -> bool:
    if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
        return False
    return consumer.bias is not None or _following_bn(DG, consumer) is not None


def fold_means(
    consumer: nn.Module, idxs: list[int], mean: torch.Tensor, DG: tp.DependencyGraph
) -> None:
    """Add the contribution of constant inputs ``mean[idxs]`` to the consumer's output bias."""
    w = consumer.weight.detach().double()
    mu = mean[idxs].to(w.device)
    if isinstance(consumer, nn.Conv2d):
        delta = torch.einsum("oikl,i->o", w[:, idxs], mu)
    else:
        delta = w[:, idxs] @ mu
    with torch.no_grad():
        if consumer.bias is not None:
            consumer.bias.add_(delta.to(consumer.bias.dtype))
        else:  # conv -> BN: the BN subtracts its running mean, so shift that instead
            bn = _following_bn(DG, consumer)
            bn.running_mean.sub_(delta.to(bn.running_mean.dtype))


class VarianceImportance(Criterion):
    """Post-activation variance of every unit, read at its consumers' inputs.

    Args:
        kind: ``mlp`` scores hidden units of linear → act → linear (VBP proper);
            ``cnn`` scores conv output channels read by convs/linears (VBP-CNN, ours).

    Groups whose units feed a consumer that cannot absorb the mean fold (no bias and no
    BatchNorm after it, or a grouped conv) are not pruned by this criterion.
    """

    needs_data = True

    def __init__(self, kind: str = "mlp"):
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"VBP kind must be 'mlp' or 'cnn', got {kind!r}")
        self.root_type = nn.Linear if kind == "mlp" else nn.Conv2d
        self.scope = (
            "hidden units of linear -> activation -> linear blocks (transformer MLPs; "
            "vbp_cnn scores conv channels)"
            if kind == "mlp"
            else "conv output channels whose consumers can absorb the mean fold"
        )
        self.stats: dict[str, _Welford] = {}  # consumer module name -> input statistics
        self._names: dict[nn.Module, str] = {}
        self._DG: tp.DependencyGraph | None = None

    @torch.no_grad()
    def prepare(self, model, batches, DG, layers):
        self._DG = DG
        self._names = {m: n for n, m in model.named_modules()}
        self.stats = {}
        hooks = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                acc = self.stats.setdefault(name, _Welford())
                hooks.append(
                    m.register_forward_pre_hook(
                        lambda mod, inp, acc=acc: acc.update(_channels_last(mod, inp[0]))
                    )
                )
        calibration_pass(model, batches, hooks, "vbp statistics")

    @torch.no_grad()
    def __call__(self, group):
        root = group[0].dep
        if not isinstance(root.target.module, self.root_type) or root.handler not in _OUT_FNS:
            return None
        total, n = torch.zeros(len(group[0].idxs), dtype=torch.float64), 0
        for item in group:
            consumer = item.dep.target.module
            if item.dep.handler not in _IN_FNS:
                continue
            if not _absorbs_fold(self._DG, consumer):
                return None
            var = self.stats[self._names[consumer]].var
            total.scatter_add_(0, torch.as_tensor(item.root_idxs), var[torch.as_tensor(item.idxs)])
            n += 1
        return None if n == 0 else total / n

    def heads(self, model):
        return {}  # VBP scores MLP units only; attention heads are kept

    def fold(self, model, DG, removal):
        """Fold the means of the units about to be removed into their consumers."""
        names = {m: n for n, m in model.named_modules()}
        for (root, _handler), idxs in removal.items():
            module = model.get_submodule(root)
            fn = _OUT_FNS[0] if isinstance(module, nn.Conv2d) else _OUT_FNS[1]
            for item in DG.get_pruning_group(module, fn, idxs=sorted(idxs)):
                if item.dep.handler in _IN_FNS:
                    consumer = item.dep.target.module
                    fold_means(consumer, list(item.idxs), self.stats[names[consumer]].mean, DG)


CRITERIA.register("vbp")(VarianceImportance)
