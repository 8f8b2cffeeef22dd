"""Shared by several test modules: one stage of a run from a config mapping, a tiny ViT, a
user's residual block and sklearn digits as loaders."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from idap.core.settings import Settings
from idap.stages import jobs

# The tests' Snakemake runs: IDAP_TEST_CORES cores (2, the machine; 1 leaves a core to other
# work), every job on one torch thread, so two jobs share two cores without oversubscribing
# them (tiny models gain nothing from a second thread; a job's start-up is most of its time).
CORES = os.environ.get("IDAP_TEST_CORES", "2")
SNAKEMAKE_CORES = ("--cores", CORES, "--max-threads", "1")


def over_default(cfg: dict) -> dict:
    """``cfg`` merged over config/config.yaml as the workflow merges a --configfile over its
    own configfile: nested mappings key by key, anything else replaced. What a workflow job
    sees, for the API side of a comparison."""
    import yaml

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            both = isinstance(v, dict) and isinstance(out.get(k), dict)
            out[k] = merge(out[k], v) if both else v
        return out

    root = Path(__file__).resolve().parents[1]
    return merge(yaml.safe_load((root / "config/config.yaml").read_text()), cfg)


def run_stage(
    stage: str,
    model: Path,
    out: Path,
    method: str,
    target: float | None,
    cfg: dict,
    *,
    dense: Path | None = None,
    dynamics_in: Path | None = None,
    dataset: str = "digits",
    threads: int = 1,
) -> dict:
    """``jobs.run_stage`` writing ``out/model.json`` and ``out/dyn.csv``."""
    return jobs.run_stage(
        stage,
        model=str(model),
        dense=str(dense or model),
        out_model=str(out / "model.json"),
        out_dynamics=str(out / "dyn.csv"),
        dataset=dataset,
        method=method,
        target=target,
        settings=Settings.from_config(cfg),
        dynamics_in=None if dynamics_in is None else str(dynamics_in),
        threads=threads,
    )


def tiny_vit(**kw) -> VisionTransformer:
    """A 2-layer, 4-head timm ViT on 1x16x16 inputs, seeded, in eval mode."""
    torch.manual_seed(0)
    cfg = dict(
        img_size=16,
        patch_size=4,
        in_chans=1,
        num_classes=5,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
    )
    cfg.update(kw)
    return VisionTransformer(**cfg).eval()


def load_workflow(workdir: Path, config: dict | None = None):
    """The workflow as Snakemake parses it (its API, no job run), from ``workdir`` (no
    results there: the planner checks no targets) with ``config`` over the shipped one.

    Returns:
        ``(rules, localrules)``: the rules by name and the names of the local ones.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    snakefile = Path(__file__).resolve().parents[1] / "Snakefile"
    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(config=config or {}),
            storage_settings=StorageSettings(),
            workdir=workdir,
            snakefile=snakefile,
        )._workflow
        return {r.name: r for r in wf.rules}, set(wf._localrules)


class Block(nn.Module):
    """A user's basic residual block, unknown to idap's registry (a stage-2 candidate type)."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def digits_loaders(seed: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """sklearn's digits as 1x8x8 images: (train 1200 shuffled by ``seed``, val 300, test)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(X[:1200], y[:1200]), batch_size=64, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(X[1200:1500], y[1200:1500]), batch_size=100)
    test = DataLoader(TensorDataset(X[1500:], y[1500:]), batch_size=100)
    return train, val, test


def ranked_channels(model: nn.Module, x: torch.Tensor, criterion: str, ignored: set[str]) -> list:
    """Every removable channel of ``model`` outside ``ignored``, ranked by the registered
    ``criterion`` prepared on ``x`` (floors: 8 channels, 10% of a layer), for tests that
    drive a search directly instead of through a protocol."""
    from idap.engine.criteria import create_criterion
    from idap.engine.pruning import build_graph, prunable_layers, rank_channels

    DG = build_graph(model, x)
    layers = prunable_layers(model, ignored)
    crit = create_criterion(criterion)
    crit.prepare(model, [x], DG, layers)
    widths = {n: m.weight.shape[0] for n, m in layers.items()}
    return rank_channels(model, DG, crit, ignored, widths, 8, 0.1)
