"""What flows between stages: the run's in-memory state and its fixed context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from idap.engine.methods import Method
from idap.engine.protocol import Protocol
from idap.stages.checkpoint import StepCheckpoint


@dataclass
class RunState:
    """One compression run between stages: the model and everything recorded so far."""

    model: nn.Module
    # the dense model's "macs", "cost" (its target measure) and "val_acc1": every target
    # and drop refers to it
    dense: dict
    rows: list[dict]  # dynamics log, one row per step
    edits: list[dict] = field(default_factory=list)  # removed channels / replaced blocks
    replaced: list[str] = field(default_factory=list)
    projected: dict = field(default_factory=dict)  # block -> fitted projection
    wall_s: dict = field(default_factory=dict)  # stage -> seconds
    notes: dict = field(default_factory=dict)  # stop reasons, accuracy before fine-tune
    stages_done: list[str] = field(default_factory=list)
    stream_position: int = 0  # batches of the run's training stream drawn so far
    iterations: int = 0  # optimiser steps taken after the dense model


@dataclass
class RunContext:
    """What stays fixed over a run: method, target, settings, data, teacher."""

    method: Method
    target: float
    settings: Any  # idap.core.settings.Settings, one-shot budget already applied
    proto: Protocol
    teacher: nn.Module | None  # the dense model (final fine-tune distils from it)
    stages: tuple[str, ...]  # the method's compression stages, in order
    truncatable: bool  # the architecture has block types stage 2 may replace
    checkpoint: Callable[[str], StepCheckpoint | None] = lambda stage: None

    @property
    def seed(self) -> int:
        return self.settings.seed

    def is_first(self, stage: str) -> bool:
        return self.stages[0] == stage

    def is_last(self, stage: str) -> bool:
        return self.stages[-1] == stage

    def budget(self) -> int | None:
        """Post-dense optimiser steps every method of a comparison gets: the step-wise
        protocol's recoveries (``steps × recovery_iters``; a one-shot method has one step
        with all of them) plus ``finetune.epochs`` epochs of the stream. Recoveries,
        truncation trials and gap steps draw from it; the final fine-tune gets the rest."""
        return self.proto.budget

    def stage1_share(self) -> float:
        """Share of the target filter pruning takes when it runs first: all of it unless
        truncation follows on an architecture that has blocks to truncate."""
        follows = "truncate_layers" in self.stages and self.truncatable
        return self.settings.prune.stage1_share if follows else 1.0
