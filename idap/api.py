"""Public entry point: compress your own model with IDAP++ (or a peer) outside Snakemake.

    import idap
    small, record = idap.compress(model, train_loader, val_loader, target=0.7)

The model need not be in our registry: say which layers are the classifier (default: the
last ``nn.Linear``), which block types may be replaced by identity in stage 2, how blocks
group into stages, and optionally which modules feed the recovery distillation. The stages
run through the same orchestrator as the workflow (:mod:`idap.stages.pipeline`).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from idap.core.runtime import setup_runtime
from idap.core.settings import Settings
from idap.data import Data, Splits
from idap.data.stream import LoaderStream
from idap.engine.methods import use_variants
from idap.engine.protocol import widths
from idap.models import ModelSpec, get_spec
from idap.stages import pipeline
from idap.stages.pipeline import make_context, summary


@dataclass
class LoaderData:
    """User DataLoaders behind the interface the protocol asks of the pipeline's ``Data``."""

    train: Any
    val: Any
    test: Any = None

    def train_stream(self, position: int = 0) -> LoaderStream:
        return LoaderStream(self.train, position)

    def val_loader(self):
        return self.val

    def test_loader(self):
        return self.test

    def calib_batches(self, n: int, device: torch.device) -> list[torch.Tensor]:
        return [x.to(device) for x, _ in itertools.islice(self.val, n)]

    def calib_pairs(self, n: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x.to(device), y.to(device)) for x, y in itertools.islice(self.val, n)]

    def example(self, device: torch.device) -> torch.Tensor:
        x, _ = next(iter(self.val))
        return x[:1].to(device)


class _Info:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes


def _data(train, val, test, settings, model: nn.Module, classifier: str):
    """Datasets get the workflow's own seeded loaders; DataLoaders are used as given."""
    given = [x for x in (train, val, test) if x is not None]
    if all(isinstance(x, Dataset) for x in given):
        out = model.get_submodule(classifier).out_features
        splits = Splits(train, val, test, _Info(out))
        d = settings.data
        return Data(splits, d.batch_size, d.eval_batch_size, settings.seed)
    if any(isinstance(x, Dataset) for x in given):
        raise TypeError("pass train, val and test all as Datasets or all as DataLoaders")
    return LoaderData(train, val, test)


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("no nn.Linear classifier found; pass classifier=('name',)")
    return names[-1]


def _target(target: float | None, target_macs: float | None) -> float:
    """The target given under its name or its former one (a TypeError: neither, or both)."""
    if target_macs is not None:
        if target is not None:
            raise TypeError("idap.compress: give target, not also its former name target_macs")
        warnings.warn(
            "idap.compress: target_macs is now named target (it may be a reduction of MACs, "
            "parameters or latency: settings['prune']['target_kind'])",
            DeprecationWarning,
            stacklevel=3,
        )
        return target_macs
    if target is None:
        raise TypeError(
            "idap.compress: target missing (the fraction in (0, 1) of MACs, or of "
            "settings['prune']['target_kind'], to remove)"
        )
    return target


def compress(
    model: nn.Module,
    train_loader,
    val_loader,
    target: float | None = None,
    *,
    method: str = "idap",
    test_loader=None,
    arch: str | None = None,
    classifier: tuple[str, ...] | None = None,
    block_types: tuple[type, ...] = (),
    stages: tuple[str, ...] = (),
    feature_taps: tuple[str, ...] = (),
    settings: dict | None = None,
    device: str = "cpu",
    seed: int = 0,
    target_macs: float | None = None,
) -> tuple[nn.Module, dict]:
    """Compress ``model`` by ``target`` (fraction of MACs removed, by default) with ``method``.

    Args:
        model: a trained classifier; it is not modified (a copy is compressed).
        train_loader: (x, y) batches for BN recalibration, recovery and the final fine-tune;
            or a Dataset (then val and test are Datasets too and idap builds the same seeded
            loaders as the workflow, with ``settings["data"]`` batch sizes).
        val_loader: (x, y) batches for every decision (scores, acceptance, budget checks).
        target: reduction in (0, 1) of MACs, measured by torch-pruning's counter, or
            of what ``settings["prune"]["target_kind"]`` names (parameters, or a latency
            timed on ``device``); for an unstructured method, ``magnitude`` … ``movement``,
            the parameter sparsity. In budget mode (``settings={"prune": {"mode": "budget",
            "max_drop": Δ}}``) the upper bound of the search for the largest reduction whose
            final model loses at most Δ pp.
        method: any registered method (``idap.engine.methods.list_methods()``), or a
            variant of one named in ``settings["variants"]``; its stages run in its order,
            with its fine-tune or without.
        test_loader: optional; only reported in the dynamics, never used to decide.
        arch: a registered architecture name: its classifier, block types, stages and taps
            (the arguments below are then ignored).
        classifier: module names never pruned (default: the last nn.Linear).
        block_types, stages: stage-2 candidates are blocks of these types inside these
            containers whose output shape equals their input's (none: stage 2 is skipped and
            the filter stage takes the whole target).
        feature_taps: modules whose outputs the recovery distils (default: none, CE only).
        settings: overrides of the config sections (same keys and defaults as
            ``config/schema.yaml``).
        target_macs: ``target``'s former name, from when the target could only be MACs;
            still accepted, with a DeprecationWarning.

    Returns:
        (compressed model, record) where the record holds the stages run, the dynamics rows,
        the edits (removed channel indices per step, blocks replaced by identity), the stop
        reasons, the dense and final metrics.
    """
    target = _target(target, target_macs)
    cfg = {**copy.deepcopy(settings or {}), "seed": seed, "device": device}
    with use_variants(cfg.get("variants", {})):  # the config's variants, this call only
        s = Settings.from_config(cfg, method=method)
        dev = setup_runtime(seed, device, None, s.precision, s.channels_last)
        if arch is not None:
            spec = get_spec(arch)
        else:
            spec = ModelSpec(
                "custom",
                build=None,
                classifier=tuple(classifier or (_last_linear(model),)),
                block_types=tuple(block_types),
                stages=tuple(stages),
                feature_taps=tuple(feature_taps),
            )
        data = _data(train_loader, val_loader, test_loader, s, model, spec.classifier[-1])
        teacher = copy.deepcopy(model).to(dev).eval()
        initial = widths(teacher, set(spec.classifier))

        def make_ctx(target: float, settings: Settings):
            return make_context(
                method, target, settings, data, dev, spec, 0, 0, teacher, initial_widths=initial
            )

        state, ctx = pipeline.compress(teacher, make_ctx, target, s)
        record = summary(state, ctx)
        final = ctx.proto.evaluate(state.model)
        final.pop("val_correct")  # per-image record: for decisions, not for the caller
        record["final"] = final
        return state.model.eval(), record
