"""Unstructured sparsity (docs/method.md §6): masks on the weights of every conv and linear
layer, the mask rules of the sparse methods, and what a sparse model costs.

A mask is held by zeroing the masked weights in place before every forward (a forward
pre-hook), so every training loop of the protocol trains a masked model unchanged, and the
gradient a masked weight receives is still the dense one (what RigL and GraNet grow from).
When a stage ends its zeros *are* the mask: the artifact needs no extra tensor and the next
stage (or job) re-derives the mask with :meth:`Masks.from_zeros`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from idap.core.registry import Registry
from idap.engine.measures import count_macs
from idap.engine.schedule import cumulative_target


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every conv and linear layer, by module name (what a mask covers)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            out[name] = _raw_weight(m)
    return out


def _raw_weight(m: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def count_weights(model: nn.Module) -> tuple[int, int]:
    """(non-zero, total) entries of the prunable weights."""
    ws = prunable_weights(model).values()
    return sum(int(w.count_nonzero()) for w in ws), sum(w.numel() for w in ws)


def param_sparsity(model: nn.Module, reference: nn.Module) -> float:
    """Share of ``reference``'s prunable weights that ``model`` no longer has as non-zero
    values: zeroed (unstructured) and removed (structured) count alike, so both families sit
    on one axis."""
    return 1.0 - count_weights(model)[0] / count_weights(reference)[1]


@torch.no_grad()
def nonzero_macs(model: nn.Module, example: torch.Tensor, dense: int | None = None) -> int:
    """MACs per image with multiplications by zero weights left out: the dense count
    (:func:`idap.engine.pruning.count_macs`; pass it as ``dense`` when already counted)
    minus, for each conv and linear layer, its zero weights times the output positions each
    is applied at."""
    if dense is None:
        dense = count_macs(model, example)[0]
    skipped = 0
    handles = []

    def hook(m, _inp, out):
        nonlocal skipped
        w = m.weight
        zeros = w.numel() - int(w.count_nonzero())
        width = out.shape[1] if isinstance(m, nn.Conv2d) else out.shape[-1]
        positions = out.numel() // (out.shape[0] * width)
        skipped += zeros * positions

    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return dense - skipped


class Masks:
    """One boolean mask per prunable weight (True: kept)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        self.model, self.masks = model, masks

    @classmethod
    def dense(cls, model: nn.Module) -> Masks:
        ws = prunable_weights(model)
        return cls(model, {n: torch.ones_like(w, dtype=torch.bool) for n, w in ws.items()})

    @classmethod
    def from_zeros(cls, model: nn.Module) -> Masks:
        """The mask a previous stage left: its zero weights."""
        return cls(model, {n: w.detach() != 0 for n, w in prunable_weights(model).items()})

    def weights(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        ws = prunable_weights(self.model)
        for n, m in self.masks.items():
            yield n, ws[n], m

    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def sparsity(self) -> float:
        return 1.0 - self.kept() / self.total()

    @torch.no_grad()
    def apply(self) -> None:
        for _n, w, m in self.weights():
            w.mul_(m)

    @contextlib.contextmanager
    def hold(self) -> Iterator[Masks]:
        """Keep masked weights at zero in every forward of the block (training steps change
        them, the next forward zeroes them again) and when it ends."""

        def pre_hook(name):
            def zero(m, _args):
                with torch.no_grad():
                    _raw_weight(m).mul_(self.masks[name])

            return zero

        handles = [
            self.model.get_submodule(n).register_forward_pre_hook(pre_hook(n)) for n in self.masks
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.apply()

    def set_global_top(self, scores: dict[str, torch.Tensor], keep: int) -> None:
        """Keep the ``keep`` highest scores over all layers (exactly ``keep``: ties are
        broken by position)."""
        flat = torch.cat([scores[n].flatten() for n in self.masks])
        idx = torch.topk(flat, keep, sorted=False).indices
        new = torch.zeros_like(flat, dtype=torch.bool)
        new[idx] = True
        i = 0
        for n, m in self.masks.items():
            self.masks[n] = new[i : i + m.numel()].view_as(m)
            i += m.numel()

    def keep_for(self, sparsity: float) -> int:
        return round((1.0 - sparsity) * self.total())


def _magnitude(masks: Masks) -> dict[str, torch.Tensor]:
    """|w| of kept weights; removed weights score -1 so they are never kept first."""
    return {n: torch.where(m, w.detach().abs(), -1.0) for n, w, m in masks.weights()}


def _cubic(k: int, steps: int, final: float) -> float:
    """Gradual-pruning schedule from dense (Zhu & Gupta, 2017): s_k = s_f·(1 − (1 − k/K)³)."""
    return final * (1 - (1 - k / steps) ** 3)


def _regrow(masks: Masks, grads: dict[str, torch.Tensor], fraction: float, per_layer: bool) -> int:
    """Drop ``fraction`` of the kept weights with the smallest |w| and grow as many
    removed ones with the largest |gradient|, starting at zero: the sparsity is unchanged.
    ``per_layer`` (RigL) keeps each layer's count; otherwise over all layers (GraNet)."""
    groups = [[n] for n in masks.masks] if per_layer else [list(masks.masks)]
    ws = prunable_weights(masks.model)
    moved = 0
    for names in groups:
        m = torch.cat([masks.masks[n].flatten() for n in names])
        w = torch.cat([ws[n].detach().flatten() for n in names])
        g = torch.cat([grads[n].flatten() for n in names])
        n_move = min(int(fraction * int(m.sum())), int((~m).sum()))
        if n_move == 0:
            continue
        drop = torch.topk(torch.where(m, -w.abs(), -math.inf), n_move).indices
        grow_score = torch.where(m, -math.inf, g.abs())
        grow_score[drop] = -math.inf  # a weight dropped now is not grown back at once
        grow = torch.topk(grow_score, n_move).indices
        m = m.clone()
        m[drop], m[grow] = False, True
        with torch.no_grad():
            i = 0
            for n in names:
                size = masks.masks[n].numel()
                masks.masks[n] = m[i : i + size].view_as(masks.masks[n])
                grown = torch.zeros(size, dtype=torch.bool, device=m.device)
                sel = grow[(grow >= i) & (grow < i + size)] - i
                grown[sel] = True
                ws[n].view(-1)[grown] = 0.0  # grown weights start at zero (RigL)
                i += size
        moved += n_move
    return moved


class MaskRule:
    """How a sparse method changes its masks over the K steps of the protocol.

    Step k either updates the mask and then recovers (``trains_first`` False: magnitude,
    GraNet, RigL, PDP) or recovers and then updates (LTH, movement: their scores need the
    training first). ``gradient()`` returns the dense gradient of the loss on the next batch
    of the run's stream, per prunable weight.
    """

    trains_first = False

    def __init__(self, model: nn.Module, target: float, settings, gradient):
        self.model, self.target = model, target
        self.steps, self.alpha = settings.prune.steps, settings.prune.alpha
        self.settings = settings.sparse
        self.gradient: Callable[[], dict[str, torch.Tensor]] = gradient
        self.masks = Masks.dense(model)

    def start(self) -> None:
        """Before step 1."""

    def update(self, k: int) -> str:
        raise NotImplementedError

    def after_training(self, k: int, piece: int) -> None:
        """After piece ``piece`` of step k's :meth:`training_splits` (LTH saves its rewind
        point)."""

    def finish(self) -> None:
        """After the last step (PDP hardens its soft mask)."""

    def training_splits(self, k: int, iters: int) -> list[int]:
        """Step k's recovery iterations, in the pieces between which
        :meth:`after_training` is called."""
        return [iters]

    def _prune_to(self, sparsity: float, scores: dict[str, torch.Tensor]) -> None:
        self.masks.set_global_top(scores, self.masks.keep_for(sparsity))


class GlobalMagnitude(MaskRule):
    """Global magnitude pruning on the structured methods' own front-loaded schedule
    (docs/method.md §2), each step followed by the same recovery."""

    def update(self, k: int) -> str:
        s = cumulative_target(k, self.steps, self.target, 1.0, self.alpha)
        self._prune_to(s, _magnitude(self.masks))
        return f"global magnitude to {100 * s:.1f}% sparsity"


class LotteryTicket(MaskRule):
    """Iterative magnitude pruning with weight rewinding (Frankle et al., 2019/2020): each
    round trains, removes the same share of the remaining weights by magnitude (s_k = 1 −
    (1 − S)^(k/K)) and rewinds the survivors (and every other parameter and buffer) to the
    weights saved ``lth_rewind_iters`` iterations into the first round; the final fine-tune
    trains the last ticket."""

    trains_first = True

    def training_splits(self, k: int, iters: int) -> list[int]:
        r = min(self.settings.lth_rewind_iters, iters)
        return [r, iters - r] if k == 1 else [iters]

    def after_training(self, k: int, piece: int) -> None:
        if k == 1 and piece == 0:
            self.rewind = copy.deepcopy(self.model.state_dict())

    def update(self, k: int) -> str:
        s = 1.0 - (1.0 - self.target) ** (k / self.steps)
        self._prune_to(s, _magnitude(self.masks))
        self.model.load_state_dict(self.rewind)
        self.masks.apply()
        return (
            f"magnitude to {100 * s:.1f}% sparsity, rewound to iteration "
            f"{self.settings.lth_rewind_iters}"
        )


class RigL(MaskRule):
    """Rigging the Lottery (Evci et al., 2020): the target sparsity from the first step
    (here: the dense model's global magnitude mask, since training starts from a trained
    dense model), then after each step but the last drop the fraction α/2·(1 + cos(πk/K))
    of each layer's kept weights with the smallest |w| and grow as many with the largest
    dense |gradient|, at zero; each layer's count is kept, so the sparsity never moves."""

    def start(self) -> None:
        self._prune_to(self.target, _magnitude(self.masks))
        self.masks.apply()

    def update(self, k: int) -> str:
        if k == 1:
            return f"global magnitude mask at {100 * self.target:.1f}% sparsity"
        frac = self.settings.rigl_alpha / 2 * (1 + math.cos(math.pi * (k - 1) / self.steps))
        moved = _regrow(self.masks, self.gradient(), frac, per_layer=True)
        return f"drop/grow {moved} weights ({100 * frac:.1f}% of each layer's kept)"


class GraNet(MaskRule):
    """GraNet (Liu et al., 2021): gradual magnitude pruning from dense on the cubic
    schedule, each step followed by zero-cost neuroregeneration: drop the fraction
    r/2·(1 + cos(πk/K)) of the kept weights with the smallest |w| (over all layers) and grow
    as many with the largest dense |gradient|; the last step only prunes."""

    def update(self, k: int) -> str:
        s = _cubic(k, self.steps, self.target)
        self._prune_to(s, _magnitude(self.masks))
        note = f"gradual magnitude to {100 * s:.1f}% sparsity"
        if k < self.steps:
            frac = self.settings.granet_regrow / 2 * (1 + math.cos(math.pi * k / self.steps))
            moved = _regrow(self.masks, self.gradient(), frac, per_layer=False)
            note += f", regrew {moved} weights"
        return note


class _SoftMask(nn.Module):
    """PDP's soft mask m = sigmoid((w² − t) / (τ·t)) with the global threshold t shared
    through ``state`` (computed once per forward of the whole model)."""

    def __init__(self, state: dict):
        super().__init__()
        self.state = state

    def forward(self, w):
        t = self.state["t"]
        return w * torch.sigmoid((w * w - t) / (self.state["tau"] * t))


class PDP(MaskRule):
    """Parameter-free differentiable pruning (Cho et al., 2023): during training each weight
    is scaled by a soft mask computed from the weights themselves, with the threshold t at
    the target share S of the squared weights (over all layers here) and temperature τ·t, so
    weights near the threshold keep a gradient and can move across it; after the last step
    the mask is made hard (the top 1 − S of w²)."""

    def start(self) -> None:
        self.state = {"t": torch.tensor(1.0), "tau": self.settings.pdp_tau}
        mods = [self.model.get_submodule(n) for n in self.masks.masks]
        self.order = {n: list(m._parameters) for n, m in zip(self.masks.masks, mods, strict=True)}
        for m in mods:
            parametrize.register_parametrization(m, "weight", _SoftMask(self.state))

        def threshold(_model, _args):
            with torch.no_grad():
                w2 = torch.cat([m.parametrizations.weight.original.flatten() ** 2 for m in mods])
                k = max(1, min(w2.numel(), int(self.target * w2.numel())))
                self.state["t"] = torch.kthvalue(w2, k).values.clamp_min(1e-12)

        self.handle = self.model.register_forward_pre_hook(threshold)

    def update(self, k: int) -> str:
        return f"soft mask at {100 * self.target:.1f}% sparsity, τ = {self.settings.pdp_tau}"

    def finish(self) -> None:
        self.handle.remove()
        for n in self.masks.masks:
            m = self.model.get_submodule(n)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            # back in its place: the state dict's order is the architecture's, as a reload gives
            m._parameters = {k: m._parameters[k] for k in self.order[n]}
        self._prune_to(self.target, _magnitude(self.masks))
        self.masks.apply()


class Movement(MaskRule):
    """Hard movement pruning (Sanh et al., 2020): scores S accumulate −∂L/∂W · W over every
    training iteration (weights moving away from zero score high); after each step's
    training the kept weights are the top 1 − s_k of S over all layers, on the cubic
    schedule."""

    trains_first = True

    def start(self) -> None:
        ws = prunable_weights(self.model)
        self.scores = {n: torch.zeros_like(w) for n, w in ws.items()}

        def acc(name, w):
            def hook(g):
                self.scores[name].sub_(g.detach() * w.detach())

            return hook

        self.handles = [w.register_hook(acc(n, w)) for n, w in ws.items()]

    def update(self, k: int) -> str:
        s = _cubic(k, self.steps, self.target)
        scores = {n: torch.where(m, self.scores[n], -math.inf) for n, m in self.masks.masks.items()}
        self._prune_to(s, scores)
        self.masks.apply()
        return f"movement scores to {100 * s:.1f}% sparsity"

    def finish(self) -> None:
        for h in self.handles:
            h.remove()


RULES = Registry("mask rule")
for _name, _rule in (
    ("magnitude", GlobalMagnitude),
    ("lth", LotteryTicket),
    ("rigl", RigL),
    ("granet", GraNet),
    ("pdp", PDP),
    ("movement", Movement),
):
    RULES.add(_name, _rule)


def create_rule(name: str, model: nn.Module, target: float, settings, gradient) -> MaskRule:
    """The mask rule ``name`` on ``model`` for a ``target`` sparsity; ``settings``: the run's
    :class:`idap.core.settings.Settings` (``prune.steps``, ``prune.alpha``, ``sparse``)."""
    return RULES.get(name)(model, target, settings, gradient)


def dense_gradient(model: nn.Module, batch, device) -> dict[str, torch.Tensor]:
    """∂CE/∂W on one batch for every prunable weight, masked weights included (the forward
    sees them at zero; their gradient is what a zero weight would get)."""
    x, y = batch
    model.zero_grad(set_to_none=True)
    was = model.training
    model.train()
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    model.train(was)
    grads = {n: w.grad.detach().clone() for n, w in prunable_weights(model).items()}
    model.zero_grad(set_to_none=True)
    return grads
