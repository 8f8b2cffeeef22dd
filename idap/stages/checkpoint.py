"""Checkpoints so that a killed job (a SLURM time limit) resumes where it stopped.

A step checkpoint (the compression stages) is an ordinary model artifact plus the loop state
(dynamics rows, edits, step), written atomically after every finished step into
``<output dir>/.checkpoint/``. A training checkpoint (the dense training and the final
fine-tune) holds the model, optimiser, schedule and scaler states every few epochs. Both
are keyed by a hash of everything the run depends on (input weights, method, target,
settings, and the source of the ``idap`` package that runs it): a checkpoint from other
inputs is ignored, never resumed from. Snakemake reruns a job whose code changed; the code
in the key stops that rerun from resuming the loop state the old code left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from idap.core import plugins
from idap.core.codehash import package_digest
from idap.core.io import read_json, write_json
from idap.models.artifact import ArtifactError, load_model, save_model


def seed_step(seed: int, step: int) -> None:
    """Reseed torch per step: a resumed step draws the same random numbers as a fresh one."""
    torch.manual_seed(seed * 100_003 + step)


class StepCheckpoint:
    """Checkpoint of a step loop whose final output is ``out_model``."""

    def __init__(self, out_model: str | Path, key: dict[str, Any], base: dict[str, Any]):
        """``key``: what the run depends on; ``base``: the artifact record fields that rebuild
        the architecture (arch, classes, channels), completed by each save's edits."""
        self.dir = Path(out_model).parent / ".checkpoint"
        self.base = dict(base)
        # the code that made it: the idap package and the plugins this job imported
        key = {**key, "code": package_digest(), "plugins": plugins.loaded_digest()}
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()

    def load(self) -> tuple[nn.Module, dict[str, Any]] | None:
        """(model, state) of the last finished step, or None to start from scratch."""
        state_path = self.dir / "state.json"
        if not state_path.exists():
            return None
        try:
            state = read_json(state_path)
            if state.get("key") != self.key:
                print("[checkpoint] ignoring a checkpoint made with other inputs", flush=True)
                return None
            model, _ = load_model(self.dir / "model.json")
        except (ArtifactError, json.JSONDecodeError, OSError) as e:
            print(f"[checkpoint] ignoring an unreadable checkpoint: {e}", flush=True)
            return None
        return model, state

    def save(self, model: nn.Module, edits: dict[str, Any], state: dict[str, Any]) -> None:
        """Save the model (its ``edits``, ``replaced`` and ``projected`` in ``edits``) and the
        loop state. The model first, the state last: the state names a complete model or none."""
        save_model(model, self.dir / "model.json", {**self.base, **edits})
        write_json(self.dir / "state.json", {**state, "key": self.key})

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def training(self, name: str, every: int) -> TrainingCheckpoint:
        """The training checkpoint of an epoch loop in this checkpoint's directory."""
        return TrainingCheckpoint(self.dir / f"{name}.pt", self.key, every)


class TrainingCheckpoint:
    """The state of an epoch loop (:func:`idap.engine.train.train_steps`), saved every
    ``every`` epochs (0: never) and read back only under the same key."""

    def __init__(self, path: str | Path, key: str, every: int):
        self.path, self.key, self.every = Path(path), key, int(every)

    def load(self) -> dict[str, Any] | None:
        if self.every <= 0 or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file cut short by the kill: start over
            print(f"[checkpoint] ignoring an unreadable checkpoint: {type(e).__name__}", flush=True)
            return None
        if state.get("key") != self.key:
            print("[checkpoint] ignoring a checkpoint made with other inputs", flush=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write atomically, on every ``every``-th epoch of the loop."""
        if self.every <= 0 or state["rows"][-1]["epoch"] % self.every:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)
