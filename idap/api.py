"""Public entry point: compress your own model with IDAP++ (or a peer) outside Snakemake.

    import idap
    small, record = idap.compress(model, train_loader, val_loader, target_macs=0.7)

The model need not be in our registry: say which layers are the classifier (default: the
last ``nn.Linear``), which block types may be replaced by identity in stage 2, how blocks
group into stages, and optionally which modules feed the recovery distillation.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import validate_config
from .context import setup_runtime
from .methods import get_method, one_shot
from .models import ModelSpec
from .protocol import Protocol, check_landing, dynamics_row, make_criterion, widths
from .prune_filters import FilterState, filter_stage
from .train import distill_finetune
from .truncate_layers import TruncState, rank_blocks, truncation_stage


@dataclass
class LoaderData:
    """Adapts user DataLoaders to what the protocol asks of the pipeline's ``Data``."""

    train: Any
    val: Any
    test: Any = None

    def train_loader(self, shuffle: bool = True):
        return self.train

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


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("no nn.Linear classifier found; pass classifier=('name',)")
    return names[-1]


def compress(
    model: nn.Module,
    train_loader,
    val_loader,
    target_macs: float = 0.7,
    *,
    method: str = "idap",
    test_loader=None,
    classifier: tuple[str, ...] | None = None,
    block_types: tuple[type, ...] = (),
    stages: tuple[str, ...] = (),
    feature_taps: tuple[str, ...] = (),
    settings: dict | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Compress ``model`` by ``target_macs`` (fraction of MACs removed) with ``method``.

    Args:
        model: a trained classifier; it is not modified (a copy is compressed).
        train_loader: (x, y) batches for BN recalibration, recovery and the final fine-tune.
        val_loader: (x, y) batches for every decision (scores, acceptance, budget checks).
        target_macs: MAC reduction in (0, 1), measured by torch-pruning's counter.
        method: "idap" (both stages), "l1" or "ifap" (filter stage only).
        test_loader: optional; only reported in the dynamics, never used to decide.
        classifier: module names never pruned (default: the last nn.Linear).
        block_types, stages: stage-2 candidates are blocks of these types inside these
            containers whose output shape equals their input's (none: stage 2 is skipped and
            the filter stage closes the gap).
        feature_taps: modules whose outputs the recovery distils (default: none, CE only).
        settings: overrides of the config sections ``prune``, ``truncate``, ``finetune``
            (same keys and defaults as ``config/schema.yaml``).

    Returns:
        (compressed model, record) where the record holds the dynamics rows, the edits
        (removed channel indices per step, blocks replaced by identity) and the stop reasons.
    """
    if not 0 < target_macs < 1:
        raise ValueError(f"target_macs must be a MAC reduction in (0, 1), got {target_macs}")
    cfg = validate_config(copy.deepcopy(settings or {}))
    prune, truncate, finetune = cfg["prune"], cfg["truncate"], cfg["finetune"]
    dev = setup_runtime(seed, device)
    m = get_method(method)
    if m.one_shot:
        prune = one_shot(prune)
    dense_model = copy.deepcopy(model).to(dev).eval()
    work = copy.deepcopy(model).to(dev)
    classifier = tuple(classifier or (_last_linear(model),))
    spec = ModelSpec(
        "custom",
        build=None,
        classifier=classifier,
        block_types=tuple(block_types),
        stages=tuple(stages),
        feature_taps=tuple(feature_taps),
    )
    data = LoaderData(train_loader, val_loader, test_loader)
    proto = Protocol(
        data,
        dev,
        spec,
        0,
        0,
        prune,
        make_criterion(m, prune),
        initial_widths=widths(work, set(classifier)),
    )
    dense = proto.evaluate(work)
    rows = [dynamics_row(0, "baseline", dense, 0.0, dense["val_acc1"], prune["max_drop"])]
    truncates = m.truncate and bool(block_types)
    share = prune["stage1_share"] if truncates else 1.0
    fs = filter_stage(
        proto, FilterState(work, rows, []), target=target_macs, share=share, seed=seed, dense=dense
    )
    record: dict[str, Any] = {"method": method, "target": target_macs, "stage1_stop": fs.stop}
    model_out, rows, edits, replaced = fs.model, fs.rows, fs.edits, []
    if truncates:
        order, scores = rank_blocks(proto, fs.model, truncate["replace"])
        ts = TruncState(fs.model, proto.evaluate(fs.model), rows, edits, [], fs.step)
        ts = truncation_stage(
            proto,
            ts,
            order=order,
            scores=scores,
            goal_macs=(1 - target_macs) * dense["macs"],
            dense=dense,
            truncate=truncate,
            seed=seed,
        )
        model_out, rows, edits, replaced = ts.model, ts.rows, ts.edits, ts.replaced
        record["projected"] = ts.projected
        record["truncation_stop"] = ts.stop
    if prune["mode"] == "target" and m.close_gap:
        check_landing(
            method, proto.macs(model_out), dense["macs"], target_macs, prune["mac_tolerance"]
        )
    before = proto.evaluate(model_out)
    if finetune["epochs"] > 0:
        distill_finetune(
            model_out,
            dense_model,
            train_loader,
            finetune["epochs"],
            finetune["optimizer"],
            finetune["lr"],
            finetune["momentum"],
            finetune["weight_decay"],
            finetune["kd_beta"],
            finetune["kd_temperature"],
            dev,
        )
    after = proto.evaluate(model_out)
    rows.append(
        dynamics_row(
            rows[-1]["step"] + 1,
            "final",
            after,
            0.0,
            dense["val_acc1"],
            prune["max_drop"],
            note=f"{finetune['epochs']} epoch(s) KD",
        )
    )
    record.update(
        rows=rows,
        edits=edits,
        replaced=replaced,
        dense=dense,
        final=after,
        val_acc1_before_finetune=before["val_acc1"],
    )
    return model_out.eval(), record
