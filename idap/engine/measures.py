"""What a structured method's target is a reduction of (``prune.target_kind``).

``macs``: multiply-accumulates per image (torch-pruning's counter), the paper's unit.
``params``: parameters (the same counter), for a model that must fit a memory budget.
``latency``: the forward time at ``prune.target_batch_size`` on the backend
``prune.target_backend``, measured on the job's device while the method prunes, relative to
the dense model timed in the same rounds: the reduction is a ratio taken on one machine.

Every search, stage goal, landing check and gap-closing step reads the target through a
:class:`Measure`, so adding a kind is one entry in :data:`MEASURES`. Timing is noisy and
not monotone in the channels removed (widths off the vector width can be slower), so a
latency target has its own tolerance (``prune.latency_tolerance``) and each probe's time is
cached within one search: the search sees one consistent, if noisy, value per candidate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from idap.core.registry import Registry


def _attention_macs(module, inp, out):
    # The whole attention block, as torch-pruning's counter takes a mapped module as a leaf:
    # the qkv and proj linears plus the two attention matmuls (2·H·N²·head_dim) per image.
    # torch-pruning's own timm counter assumes a square proj, wrong once heads are pruned.
    x = inp[0]
    B, N = x.shape[0], x.shape[1]
    qkv, proj = module.qkv, module.proj
    linears = qkv.in_features * qkv.out_features + proj.in_features * proj.out_features
    module.__flops__ += int(B * N * linears + 2 * B * module.num_heads * N * N * module.head_dim)


def _register_attention_counter() -> None:
    from idap.models import HeadAttention

    tp.utils.op_counter.MODULES_MAPPING[HeadAttention] = _attention_macs
    try:
        from timm.models.vision_transformer import Attention
    except ImportError:  # timm absent: no timm attention to count
        return
    tp.utils.op_counter.MODULES_MAPPING[Attention] = _attention_macs


_register_attention_counter()


def count_macs(
    model: nn.Module, example: torch.Tensor, *, in_place: bool = False
) -> tuple[int, int]:
    """(MACs per image, parameters) at the example's resolution, batch 1.

    A layer under a ``torch.nn.utils.parametrize`` parametrisation (PDP's soft mask) is an
    instance of a class made for it (``ParametrizedConv2d``), which torch-pruning's counter
    looks up by exact type and would count as 0: it is counted by the rule of the class it
    was made from, for the duration of the call.

    ``in_place``: count on ``model`` itself, for a copy the caller throws away (a search
    probe): torch-pruning's counter otherwise deep-copies it first, most of a count's time on
    a small model. Its hooks and counters are removed; its counting methods stay bound.
    """
    mapping = tp.utils.op_counter.MODULES_MAPPING
    added = []
    for m in model.modules():
        cls = type(m)
        if parametrize.is_parametrized(m) and cls not in mapping:
            base = next((b for b in cls.__mro__[1:] if b in mapping), None)
            if base is not None:
                mapping[cls] = mapping[base]
                added.append(cls)
    was = model.training
    model.eval()
    try:
        if in_place:
            macs, params = _count_in_place(model, example[:1])
        else:
            macs, params = tp.utils.count_ops_and_params(model, example[:1])
    finally:
        model.train(was)
        for cls in added:
            mapping.pop(cls, None)
    return int(macs), int(params)


@torch.no_grad()
def _count_in_place(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """torch-pruning's ``count_ops_and_params`` on ``model`` itself, through the counter's
    own functions (same hooks, same sums), without its deep copy."""
    counter = tp.utils.op_counter
    net = counter.add_flops_counting_methods(model)
    net.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
    try:
        net(x)
        macs, params, _, _ = net.compute_average_flops_cost()
    finally:
        net.stop_flops_count()
    return macs, params


@dataclass(frozen=True)
class Measure:
    """One target kind, bound to a run's example input and settings."""

    kind: str
    noun: str  # in messages: "MAC target"
    plural: str  # in messages: "-50.0% MACs"
    tolerance: float  # a landing within this fraction of the goal, from below
    measure: Callable[[nn.Module], float]
    fmt: Callable[[float], str]
    deterministic: bool = True  # the same model always measures the same
    # the landing check's reading, where it differs from a search probe's (a timed measure
    # times the final model over more rounds); None: the same
    check: Callable[[nn.Module], float] | None = None
    # the reading of a copy the caller throws away (a search probe), where it can be cheaper
    # (counted in place); None: the same as ``measure``
    probe: Callable[[nn.Module], float] | None = None

    def __call__(self, model: nn.Module) -> float:
        return self.measure(model)

    def of_copy(self, model: nn.Module) -> float:
        """The reading of ``model``, a copy the caller throws away afterwards."""
        return (self.probe or self.measure)(model)

    def final(self, model: nn.Module) -> float:
        """The reading the landing check judges ``model`` by."""
        return (self.check or self.measure)(model)


MEASURES = Registry("target kind")


def mac_measure(example: torch.Tensor, tolerance: float) -> Measure:
    return Measure(
        "macs",
        "MAC",
        "MACs",
        tolerance,
        lambda m: float(count_macs(m, example)[0]),
        lambda v: f"{v / 1e6:.2f} M MACs",
        probe=lambda m: float(count_macs(m, example, in_place=True)[0]),
    )


@MEASURES.register("macs")
def _macs(prune, example: torch.Tensor, reference: nn.Module | None) -> Measure:
    return mac_measure(example, prune.mac_tolerance)


@MEASURES.register("params")
def _params(prune, example: torch.Tensor, reference: nn.Module | None) -> Measure:
    return Measure(
        "params",
        "parameter",
        "parameters",
        prune.mac_tolerance,
        lambda m: float(count_macs(m, example)[1]),
        lambda v: f"{v / 1e6:.3f} M parameters",
        probe=lambda m: float(count_macs(m, example, in_place=True)[1]),
    )


@MEASURES.register("latency")
def _latency(prune, example: torch.Tensor, reference: nn.Module | None) -> Measure:
    """Latency relative to the dense model (``reference``), timed in alternating rounds:
    a machine that slows down or speeds up while a method prunes (another job, frequency
    scaling) moves both timings of a round, not the ratio. 1.0 is the dense model's."""
    from idap.models import deploy

    backend, batch, threads = prune.target_backend, prune.target_batch_size, prune.target_threads
    warmup, run_time, rounds = prune.target_warmup, prune.target_run_time, prune.target_rounds
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *example.shape[1:]), generator=gen).to(example.device)
    built: dict[str, deploy.Deployed] = {}

    def deployed(model: nn.Module) -> deploy.Deployed:
        was = model.training
        try:
            return deploy.deploy(backend, model.eval(), x, threads=threads)
        finally:
            model.train(was)

    def measure(model: nn.Module, rounds: int = rounds) -> float:
        if reference is None:
            raise ValueError("a latency target is timed against the dense model: none given")
        if model is reference:
            return 1.0
        if "dense" not in built:
            # timed as the latency stage times: the allocator keeps freed memory (process
            # wide; the training between probes would otherwise change what each timed call
            # page-faults in) and a fixed number of intra-op threads
            deploy.steady_allocator()
            built["dense"] = deployed(reference)
        pair = (built["dense"], deployed(model))
        was = model.training
        model.eval()
        ratios = []
        try:
            with deploy.intra_op_threads(threads):
                for _ in range(rounds):
                    dense_t, t = (
                        np.median(
                            deploy.time_calls(d, d.to_input(x), x.device, None, warmup, run_time)
                        )
                        for d in pair
                    )
                    ratios.append(t / dense_t)
        finally:
            model.train(was)
        return float(np.median(ratios))

    return Measure(
        "latency",
        f"latency ({backend}, batch {batch})",
        "latency",
        prune.latency_tolerance,
        measure,
        lambda v: f"{v:.3f} of the dense latency",
        deterministic=False,
        # the search keeps the first candidate that reads under its bound, so its reading
        # tends to be low: the check re-times over three times the rounds
        check=lambda model: measure(model, 3 * rounds),
    )


def create_measure(prune, example: torch.Tensor, reference: nn.Module | None) -> Measure:
    """The measure ``prune.target_kind`` names, on ``example``'s shape and device;
    ``reference`` is the dense model (a timed measure is relative to it)."""
    return MEASURES.get(prune.target_kind)(prune, example, reference)
