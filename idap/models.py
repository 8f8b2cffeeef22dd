"""Model registry: architecture name -> builder plus what pruning needs to know about it.

Each entry says which layers must never be pruned (the classifier), which block types are
candidates for layer truncation, how blocks group into stages (keep >= 1 per stage) and which
modules are the feature taps used by the recovery distillation loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from .registry import Registry

MODELS = Registry("model")


@dataclass
class ModelSpec:
    """What the pipeline needs to know about an architecture.

    Attributes:
        name: registry key.
        build: ``build(num_classes, in_chans) -> nn.Module`` (random init).
        classifier: module names never pruned (their outputs are the class logits).
        block_types: module classes eligible for identity replacement in stage 2.
        stages: names of containers whose children are blocks; each keeps >= 1 live block.
        feature_taps: modules whose outputs feed the recovery distillation (first/middle/last).
        input_size: evaluation resolution when the dataset does not fix one (None: dataset's).
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


def create_model(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """Build a freshly initialised model by registry name.

    Raises:
        UnknownNameError: the name is not registered (message lists valid names).
    """
    return get_spec(name).build(num_classes, in_chans)


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (3x3 stem, three stages of torchvision BasicBlocks).

    Sized for 8-32 px inputs on a CPU: the residual blocks give stage 2 real candidates.
    A stride-2 stem quarters the MACs for 28-32 px inputs (5 M MACs at 28 px).
    """

    def __init__(
        self, num_classes: int, in_chans: int, widths=(16, 32, 64), depths=(2, 2, 2), stem_stride=1
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, c_in = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(d):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or c_in != w:
                    down = nn.Sequential(nn.Conv2d(c_in, w, 1, s, bias=False), nn.BatchNorm2d(w))
                blocks.append(BasicBlock(c_in, w, stride=s, downsample=down))
                c_in = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_RESNET_COMMON = dict(
    classifier=("fc",),
    block_types=(BasicBlock,),
    stages=("layer1", "layer2", "layer3"),
    feature_taps=("layer1", "layer2", "layer3"),
)

register_model(
    ModelSpec(
        name="resnet_tiny",
        build=lambda nc, ic: SmallResNet(nc, ic, stem_stride=2),
        **_RESNET_COMMON,
    )
)
register_model(
    ModelSpec(
        name="resnet_micro",
        build=lambda nc, ic: SmallResNet(nc, ic, widths=(16, 24, 32), depths=(2, 2, 2)),
        **_RESNET_COMMON,
    )
)
