"""Small architectures trained from scratch on a CPU: CIFAR-style ResNets and a tiny ViT."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from idap.models.registry import ModelSpec, register_model


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
# The CIFAR ResNet-20 shape (stride-1 stem, three blocks per stage, 16/32/64 wide): with two
# removable blocks per stage, stage 2 has a real choice to make.
register_model(
    ModelSpec(
        name="resnet20",
        build=lambda nc, ic: SmallResNet(nc, ic, widths=(16, 32, 64), depths=(3, 3, 3)),
        **_RESNET_COMMON,
    )
)


def _vit_tiny(num_classes: int, in_chans: int) -> nn.Module:
    """A tiny timm ViT for 28 px inputs (patch 4, 4 encoder layers of 4 heads, width 64):
    timm's fused-qkv ``Attention`` is what head scoring and head pruning address."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=28,
        patch_size=4,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
    )


def _timm_block() -> type:
    from timm.models.vision_transformer import Block

    return Block


register_model(
    ModelSpec(
        name="vit_tiny",
        build=_vit_tiny,
        classifier=("head",),
        block_types=(_timm_block(),),
        stages=("blocks",),
        feature_taps=("blocks.0", "blocks.2", "blocks.3"),
        input_size=28,
    )
)


# ------------------------------------------------------------------------------------------
