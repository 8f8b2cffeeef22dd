"""Shared by several test modules: one stage of a run, from a config mapping."""

from __future__ import annotations

from pathlib import Path

from idap.core.settings import Settings
from idap.stages import jobs


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
