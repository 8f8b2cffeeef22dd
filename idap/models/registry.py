"""Model registry: architecture name -> builder plus what pruning needs to know about it.

Each entry says which layers must never be pruned (the classifier), which block types are
candidates for layer truncation, how blocks group into stages (keep >= 1 per stage) and which
modules are the feature taps used by the recovery distillation loss.

Two families: small CIFAR-style ResNets trained from scratch on a CPU (``resnet_tiny``,
``resnet_micro``), and the paper grid's ten torchvision ImageNet architectures, which start
from torchvision's ImageNet weights (``create_model(..., pretrained=True)``,
``idap.models.weights``; choices per model in docs/paper_grid.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from idap.core.registry import Registry

MODELS = Registry("model")


@dataclass
class ModelSpec:
    """What the pipeline needs to know about an architecture.

    Attributes:
        name: registry key.
        build: ``build(num_classes, in_chans) -> nn.Module`` (random init).
        classifier: module names never pruned: the classifier (its outputs are the class
            logits), plus, where torch-pruning cannot couple a layer's output channels safely,
            that layer (ViT's patch embedding, which carries the residual-stream width;
            ShuffleNetV2's convs writing into the shuffled channel stream). Any layer listed
            here also removes every channel coupled to it from the ranking.
        block_types: module classes eligible for identity replacement in stage 2.
        stages: names of containers whose children are blocks; each keeps >= 1 live block.
        feature_taps: modules whose outputs feed the recovery distillation (first/middle/last).
        input_size: the architecture's own evaluation resolution (square side; None: use the
            dataset's). The paper-grid models carry the resolution of their torchvision
            ImageNet weights (e.g. 299 for Inception-v3, 380 for EfficientNet-B4).
        extra: free-form facts, e.g. ``stem`` (the first conv, adapted for non-RGB inputs),
            ``head`` (the classifier layer re-initialised for a dataset's classes) and
            ``torchvision_weights`` (the pretrained weights enum used by ``idap.models.weights``).
    """

    name: str
    build: Callable[[int, int], nn.Module]
    classifier: tuple[str, ...]
    block_types: tuple[type, ...] = ()
    stages: tuple[str, ...] = ()
    feature_taps: tuple[str, ...] = ()
    input_size: int | None = None
    extra: dict = field(default_factory=dict)


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS.register(spec.name)(spec)
    return spec


def get_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def list_models() -> list[str]:
    return MODELS.names()
