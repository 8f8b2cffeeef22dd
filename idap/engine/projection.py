"""The projection variant of layer truncation (docs/method.md §3, beyond the paper).

A shape-changing block (e.g. a downsampling residual block) can be replaced by a 1x1 conv
with the block's stride and a bias, fitted by least squares on val activations and followed
by ReLU when the block's outputs are non-negative. Its divergence is measured against that
projection, so every truncation candidate ranks by the relative error of its replacement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from idap.engine.scores import calibration_pass
from idap.models.artifact import projection_module

PROJECTION_POSITIONS = 4096  # output positions sampled for one least-squares projection fit


def projection_stride(in_shape: tuple, out_shape: tuple) -> int | None:
    """Stride of the 1x1 conv that maps an (N, C, H, W) input onto the output's grid, or None
    when there is none (not 4-D, or no stride gives the output's spatial size)."""
    if len(in_shape) != 4 or len(out_shape) != 4 or in_shape[0] != out_shape[0]:
        return None
    (h, w), (ho, wo) = in_shape[2:], out_shape[2:]
    for s in range(1, max(h, w) + 1):
        if (h - 1) // s + 1 == ho and (w - 1) // s + 1 == wo:
            return s
    return None


@torch.no_grad()
def fit_projections(
    model: nn.Module,
    blocks: dict[str, int],
    batches: Iterable[torch.Tensor],
    max_positions: int = PROJECTION_POSITIONS,
    seed: int = 0,
) -> dict[str, tuple[nn.Sequential, dict]]:
    """Fit T_out ≈ W · T_in[..., ::s, ::s] + b per block by least squares
    (docs/method.md §3 variant).

    Args:
        blocks: block name -> stride s of its 1x1 conv projection.
        batches: calibration (val) inputs of ``model``; the block inputs and outputs are
            hooked, and up to ``max_positions`` output positions in all are sampled from
            them with a fixed-seed generator (the global RNG is untouched).

    Returns:
        name -> (projection module on the block's device/dtype, record entry
        ``{"in", "out", "stride", "relu"}``). The system is solved with
        ``torch.linalg.lstsq`` in float64; ``relu`` is true when every output of the block
        was >= 0 on the batches (a BasicBlock ends in ReLU).
    """
    batches = list(batches)
    per_batch = math.ceil(max_positions / max(len(batches), 1))
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, tuple[list, list]] = {n: ([], []) for n in blocks}
    lowest = {n: math.inf for n in blocks}

    def make_hook(name: str, s: int):
        def hook(_m, inp, out):
            x, y = inp[0].detach(), out.detach()
            n, _, h, w = y.shape
            pick = torch.randperm(n * h * w, generator=gen)[:per_batch].to(y.device)
            b, i, j = pick // (h * w), (pick % (h * w)) // w, pick % w
            rows[name][0].append(x[b, :, i * s, j * s].double().cpu())
            rows[name][1].append(y[b, :, i, j].double().cpu())
            lowest[name] = min(lowest[name], float(y.min()))

        return hook

    hooks = [
        model.get_submodule(n).register_forward_hook(make_hook(n, s)) for n, s in blocks.items()
    ]
    calibration_pass(model, batches, hooks, "projection fit")
    out = {}
    for name, stride in blocks.items():
        if not rows[name][0]:
            raise RuntimeError(f"block {name} saw no calibration data to fit a projection")
        X, Y = torch.cat(rows[name][0]), torch.cat(rows[name][1])
        c_in, c_out = X.shape[1], Y.shape[1]
        A = torch.cat([X, X.new_ones(len(X), 1)], dim=1)
        sol = torch.linalg.lstsq(A, Y).solution  # (c_in + 1, c_out)
        info = {"in": c_in, "out": c_out, "stride": stride, "relu": bool(lowest[name] >= 0)}
        module = projection_module(c_in, c_out, stride, info["relu"])
        module[0].weight.copy_(sol[:c_in].T.reshape(c_out, c_in, 1, 1))
        module[0].bias.copy_(sol[c_in])
        ref = next(model.get_submodule(name).parameters(), None)
        if ref is not None:
            module.to(device=ref.device, dtype=ref.dtype)
        else:
            module.to(device=batches[0].device)
        out[name] = (module, info)
    return out


@torch.no_grad()
def projection_divergence(
    model: nn.Module, batches: Iterable[torch.Tensor], projections: dict[str, nn.Module]
) -> dict[str, float]:
    """D_b = E_x[ ||T_out(x) - P(T_in(x))||_2 / (||T_out(x)||_2 + 1e-6) ] per block, with P
    the block's fitted projection (``block_divergence`` with P(T_in) in place of T_in)."""
    sums = {n: 0.0 for n in projections}
    counts = {n: 0 for n in projections}

    def make_hook(name: str):
        def hook(_m, inp, out):
            y = out.detach().flatten(1).double()
            p = projections[name](inp[0].detach()).flatten(1).double()
            d = (y - p).norm(dim=1) / (y.norm(dim=1) + 1e-6)
            sums[name] += float(d.sum())
            counts[name] += d.shape[0]

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in projections]
    calibration_pass(model, batches, hooks, "projection divergence")
    return {n: sums[n] / max(counts[n], 1) for n in projections}
