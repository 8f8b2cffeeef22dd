"""Information-flow divergence scores (docs/method.md §1) and block divergence (docs/method.md §3).

All scores are computed on the validation split, in eval mode, without gradients, with
forward hooks on the tensor that actually flows on: the activation following a unit's
BatchNorm, or the BatchNorm output itself where the activation only comes after a residual
add (a block's last conv, a projection shortcut).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from idap.core.progress import progress

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Mish, nn.ELU)

# torch-pruning records activation modules and functional activations alike as element-wise
# ops named after their autograd node; map those names back to the function.
_GRAD_FN_ACTIVATIONS = {
    "ReluBackward": F.relu,
    "GeluBackward": F.gelu,
    "SiluBackward": F.silu,
    "HardswishBackward": F.hardswish,
    "MishBackward": F.mish,
    "EluBackward": F.elu,
    "LeakyReluBackward": F.leaky_relu,
    "SigmoidBackward": torch.sigmoid,
}


def _single_successor(DG: tp.DependencyGraph, module: nn.Module) -> nn.Module | None:
    node = DG.module2node.get(module)
    if node is None or len(node.outputs) != 1:
        return None
    return node.outputs[0].module


def _as_activation(module: nn.Module | None):
    if isinstance(module, ACTIVATIONS):
        return module
    grad_fn = getattr(module, "_grad_fn", None)
    name = grad_fn if isinstance(grad_fn, str) else type(grad_fn).__name__
    for key, fn in _GRAD_FN_ACTIVATIONS.items():
        if name.startswith(key):
            return fn
    return None


def flow_tap(DG: tp.DependencyGraph, layer: nn.Module):
    """Return (module to hook, activation to apply to its output) for a conv/linear unit.

    The hooked tensor is the BN output when a BN directly follows; the activation is applied
    only when it directly follows that tensor (so never across a residual add).
    """
    tap = layer
    nxt = _single_successor(DG, layer)
    if isinstance(nxt, nn.modules.batchnorm._BatchNorm):
        tap = nxt
        nxt = _single_successor(DG, nxt)
    return tap, _as_activation(nxt)


def calibration_pass(model: nn.Module, batches, hooks: list, desc: str) -> None:
    """Run ``batches`` through ``model`` in eval mode; remove ``hooks`` and restore the mode."""
    was_training = model.training
    model.eval()
    try:
        for x in progress(batches, desc=desc):
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _apply_act(act, x: torch.Tensor) -> torch.Tensor:
    if act is None:
        return x
    if isinstance(act, nn.Module) and getattr(act, "inplace", False):
        x = x.clone()  # never mutate the tensor the network goes on using
    return act(x)


@torch.no_grad()
def divergence_scores(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    layers: dict[str, nn.Module],
    DG: tp.DependencyGraph,
    size_factor: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-output-unit divergence s(l, c) for every conv and linear layer in ``layers``.

    Conv channel c: (1/(C·H·W)) · E_x[||A_c(x)||_2] · ||W_c||_2.
    Linear unit j:  (1/n_l) · sqrt(E_{x,t}[h_j^2]) · ||W[j, :]||_2 (tokens t, if any).

    Args:
        model: model in any mode; it is put in eval mode here and restored after.
        batches: calibration input batches (already on the model's device).
        layers: name -> nn.Conv2d / nn.Linear to score.
        DG: dependency graph of ``model``, used to find each unit's BN and activation.
        size_factor: include the 1/(C·H·W) or 1/n_l factor (False for the IFAP variant).

    Returns:
        name -> 1-D tensor of length out_channels / out_features (float64, CPU).
    """
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    shape_factor: dict[str, float] = {}
    hooks = []

    def make_hook(name: str, act: nn.Module | None, is_conv: bool):
        def hook(_m, _inp, out):
            a = _apply_act(act, out).detach().double()
            if is_conv:  # (B, C, H, W): per-sample spatial L2 norm, summed over samples
                per = a.flatten(2).norm(dim=2).sum(0)
                n = a.shape[0]
                shape_factor[name] = float(a.shape[1] * a.shape[2] * a.shape[3])
            else:  # (B, ..., n): mean square over samples and tokens
                flat = a.reshape(-1, a.shape[-1])
                per = flat.pow(2).sum(0)
                n = flat.shape[0]
                shape_factor[name] = float(a.shape[-1])
            acc[name] = acc.get(name, 0) + per.cpu()
            count[name] = count.get(name, 0) + n

        return hook

    for name, layer in layers.items():
        tap, act = flow_tap(DG, layer)
        hooks.append(tap.register_forward_hook(make_hook(name, act, isinstance(layer, nn.Conv2d))))
    calibration_pass(model, batches, hooks, "divergence scores")

    scores = {}
    for name, layer in layers.items():
        if name not in acc:
            raise RuntimeError(f"layer {name} produced no activations during calibration")
        mean = acc[name] / count[name]
        flow = mean if isinstance(layer, nn.Conv2d) else mean.sqrt()
        w = layer.weight.detach().double().cpu().flatten(1).norm(dim=1)
        s = flow * w
        if size_factor:
            s = s / shape_factor[name]
        scores[name] = s
    return scores


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """timm-style attention: a fused ``qkv`` linear, ``proj``, ``num_heads``, ``head_dim``."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and hasattr(m, "num_heads")
        and hasattr(m, "head_dim")
    }


def head_weight_norms(attn: nn.Module) -> torch.Tensor:
    """||W_Q^h||_F + ||W_K^h||_F + ||W_V^h||_F per head h (rows of the fused qkv weight)."""
    H, hd = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.detach().double().cpu().view(3, H, hd, -1)
    return w.pow(2).sum((2, 3)).sqrt().sum(0)


@torch.no_grad()
def head_scores(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    attns: dict[str, nn.Module],
    size_factor: bool = True,
) -> dict[str, torch.Tensor]:
    """Attention-head divergence s(h) = (1/n)·E_x[||O_h(x)||_F]·(||W_Q^h||+||W_K^h||+||W_V^h||).

    O_h is head h's output softmax(Q_h K_h^T/sqrt(d)) V_h, read as the input of ``proj``
    reshaped to (B, N, H, head_dim); n is the number of tokens. A layer's attention
    divergence is the sum of its heads' scores.
    """
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    tokens: dict[str, int] = {}
    hooks = []

    def make_hook(name: str, attn: nn.Module):
        def hook(_m, inp):
            x = inp[0].detach().double()
            B, N = x.shape[0], x.shape[1]
            o = x.reshape(B, N, attn.num_heads, -1)
            per = o.pow(2).sum((1, 3)).sqrt().sum(0)  # sum over samples of ||O_h(x)||_F
            acc[name] = acc.get(name, 0) + per.cpu()
            count[name] = count.get(name, 0) + B
            tokens[name] = N

        return hook

    for name, attn in attns.items():
        hooks.append(attn.proj.register_forward_pre_hook(make_hook(name, attn)))
    calibration_pass(model, batches, hooks, "head scores")
    return {
        n: acc[n] / count[n] * head_weight_norms(a) / (tokens[n] if size_factor else 1.0)
        for n, a in attns.items()
        if n in acc
    }


@torch.no_grad()
def block_divergence(
    model: nn.Module, batches: Iterable[torch.Tensor], blocks: dict[str, nn.Module]
) -> dict[str, float]:
    """D_b = E_x[ ||T_out(x) - T_in(x)||_2 / (||T_out(x)||_2 + 1e-6) ] per block
    (docs/method.md §3).

    Scale-invariant: multiplying a block's input and output by c > 0 leaves D_b unchanged.
    """
    sums = {n: 0.0 for n in blocks}
    counts = {n: 0 for n in blocks}
    hooks = []

    def make_hook(name: str):
        def hook(_m, inp, out):
            x = inp[0].detach().flatten(1).double()
            y = out.detach().flatten(1).double()
            d = (y - x).norm(dim=1) / (y.norm(dim=1) + 1e-6)
            sums[name] += float(d.sum())
            counts[name] += d.shape[0]

        return hook

    for name, block in blocks.items():
        hooks.append(block.register_forward_hook(make_hook(name)))
    calibration_pass(model, batches, hooks, "block divergence")
    return {n: sums[n] / max(counts[n], 1) for n in blocks}
