"""An example plugin: your own pruning method, a criterion and the method that uses it, in one
file. Name the file in a config and the method runs beside IDAP++ and the peers under the
same protocol (same data stream, budget, teacher and MAC target), in every door:

    plugins: [examples/my_method.py]
    grid: {methods: [idap, l1, act_mean]}

The criterion ranks a channel by its mean absolute output on the calibration batches (a
channel that barely fires carries little to the next layer); a coupled group (e.g. the
channels tied by a residual sum) sums its members' normalised scores.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from idap.engine.criterion import CRITERIA, Criterion
from idap.engine.methods import Method, register_method

_OUT = (nn.Conv2d, nn.Linear)
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


@CRITERIA.register("act_mean")
class MeanActivation(Criterion):
    """Mean |activation| per output channel, each layer's scores divided by their mean."""

    needs_data = True  # prepare() gets the calibration batches

    def __init__(self):
        self.scores: dict[nn.Module, torch.Tensor] = {}

    @torch.no_grad()
    def prepare(self, model, batches, DG, layers):
        sums: dict[nn.Module, torch.Tensor] = {}

        def hook(module, _inputs, out):
            dims = [d for d in range(out.dim()) if d != 1] if out.dim() > 2 else [0]
            s = out.detach().abs().double().mean(dims).cpu()
            sums[module] = sums.get(module, 0) + s

        handles = [m.register_forward_hook(hook) for m in layers.values() if isinstance(m, _OUT)]
        was = model.training
        model.eval()
        try:
            for x in batches:
                model(x)
        finally:
            model.train(was)
            for h in handles:
                h.remove()
        self.scores = {m: s / s.mean().clamp_min(1e-30) for m, s in sums.items()}

    @torch.no_grad()
    def __call__(self, group):
        """A 1-D score per root channel of the group (torch-pruning's Importance contract)."""
        total = None
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if dep.handler not in _OUT_FNS or layer not in self.scores:
                continue  # only output channels carry an activation score
            s = self.scores[layer]
            if len(s) != layer.weight.shape[0]:  # scores go stale after pruning
                raise RuntimeError(f"stale activation scores: {len(s)} for {layer}")
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            total.scatter_add_(0, torch.as_tensor(group[i].root_idxs), s[torch.as_tensor(idxs)])
        return total  # None: nothing scored in this group, the pruner skips it


# The method: this criterion under the shared step-wise filter-pruning protocol
# (stages: filter pruning, then the final fine-tune every method gets).
register_method(Method("act_mean", "act_mean", "Mean activation (example plugin)"))
