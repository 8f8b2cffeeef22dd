"""Shared by several test modules: one stage of a run from a config mapping, a tiny ViT."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

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
