"""The paper grid: ten ImageNet architectures, all from torchvision (see docs/paper_grid.md).

Every builder returns torchvision's own module tree, so torchvision's ImageNet state dicts
load by key (``idap.models.weights``). Two forwards are rewritten in a numerically identical
form that torch-pruning can trace (ShuffleNetV2's channel shuffle, ViT's attention output
projection); neither changes a parameter name or shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from idap.models.attention import build_vit_b_16
from idap.models.layers import replace_stem
from idap.models.registry import ModelSpec, register_model


def _taps(stages: tuple[str, ...]) -> tuple[str, str, str]:
    """First, middle and last stage outputs: the recovery distillation taps (docs/method.md §2)."""
    return stages[0], stages[len(stages) // 2], stages[-1]


def _tv(name: str, stem: str, **kwargs) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
        return replace_stem(model, stem, in_chans)

    return build


def _register_tv(
    name: str,
    *,
    stem: str,
    weights: str,
    input_size: int,
    classifier: tuple[str, ...],
    block_types: tuple[type, ...] = (),
    stages: tuple[str, ...] = (),
    feature_taps: tuple[str, ...] | None = None,
    build: Callable[[int, int], nn.Module] | None = None,
    head: str | None = None,
    **extra,
) -> None:
    register_model(
        ModelSpec(
            name=name,
            build=build or _tv(name, stem),
            classifier=classifier,
            block_types=block_types,
            stages=stages,
            feature_taps=feature_taps or _taps(stages),
            input_size=input_size,
            extra={
                "stem": stem,
                "head": head or classifier[-1],
                "torchvision_weights": weights,
                "library": "torchvision",
                **extra,
            },
        )
    )


def _paper_models() -> None:
    from torchvision.models.convnext import CNBlock
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.mobilenetv3 import InvertedResidual as MobileInvertedResidual
    from torchvision.models.resnet import Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock

    _register_tv(
        "resnet50",
        stem="conv1",
        weights="ResNet50_Weights.IMAGENET1K_V2",
        input_size=224,
        classifier=("fc",),
        block_types=(Bottleneck,),
        stages=("layer1", "layer2", "layer3", "layer4"),
    )
    _register_tv(
        "efficientnet_b4",
        stem="features.0.0",
        weights="EfficientNet_B4_Weights.IMAGENET1K_V1",
        input_size=380,
        classifier=("classifier.1",),
        # MBConv has a skip exactly when stride 1 and in == out, i.e. when shapes match.
        block_types=(MBConv,),
        stages=tuple(f"features.{i}" for i in range(1, 8)),
    )
    _register_tv(
        "efficientnet_v2_s",
        stem="features.0.0",
        weights="EfficientNet_V2_S_Weights.IMAGENET1K_V1",
        input_size=384,
        classifier=("classifier.1",),
        block_types=(MBConv, FusedMBConv),
        stages=tuple(f"features.{i}" for i in range(1, 7)),
    )
    _register_tv(
        "mobilenet_v3_large",
        stem="features.0.0",
        weights="MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        input_size=224,
        classifier=("classifier.3",),
        # torchvision keeps the blocks in one flat Sequential; the blocks that change the
        # shape (one per resolution) are never candidates, so every resolution keeps one.
        block_types=(MobileInvertedResidual,),
        stages=("features",),
        feature_taps=("features.3", "features.12", "features.16"),
    )
    _register_tv(
        "densenet121",
        stem="features.conv0",
        weights="DenseNet121_Weights.IMAGENET1K_V1",
        input_size=224,
        classifier=("classifier",),
        # No truncation candidates: a dense layer's output is 32 new channels concatenated
        # to its input, never shape-preserving; dropping one means slicing every later
        # layer's input, which an identity replacement cannot express (docs/paper_grid.md).
        block_types=(),
        stages=(),
        feature_taps=("features.denseblock1", "features.denseblock3", "features.denseblock4"),
    )
    _register_tv(
        "convnext_small",
        stem="features.0.0",
        weights="ConvNeXt_Small_Weights.IMAGENET1K_V1",
        input_size=224,
        classifier=("classifier.2",),
        block_types=(CNBlock,),
        stages=("features.1", "features.3", "features.5", "features.7"),
    )
    _register_tv(
        "vgg19_bn",
        stem="features.0",
        weights="VGG19_BN_Weights.IMAGENET1K_V1",
        input_size=224,
        classifier=("classifier.6",),
        feature_taps=("features.6", "features.26", "features.52"),  # pool outputs 1, 3, 5
    )
    _register_tv(
        "inception_v3",
        stem="Conv2d_1a_3x3.conv",
        weights="Inception_V3_Weights.IMAGENET1K_V1",
        input_size=299,
        classifier=("fc",),
        # Inception modules have no skip: identity is no drop-in for a vanishing module.
        feature_taps=("Mixed_5d", "Mixed_6e", "Mixed_7c"),
        build=_tv(
            "inception_v3",
            "Conv2d_1a_3x3.conv",
            aux_logits=False,  # one logits tensor in train mode too
            init_weights=True,
            transform_input=False,  # idap.models.weights folds torchvision's input transform
        ),
        min_input_size=75,
    )
    _register_tv(
        "shufflenet_v2_x2_0",
        stem="conv1.0",
        weights="ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1",
        input_size=224,
        classifier=_SHUFFLENET_FIXED,
        head="fc",
        stages=("stage2", "stage3", "stage4"),
        build=_build_shufflenet,
    )
    _register_tv(
        "vit_b_16",
        stem="conv_proj",
        weights="ViT_B_16_Weights.IMAGENET1K_V1",
        input_size=224,
        # conv_proj is listed so that the residual-stream width (shared by every layer and
        # attention head) is never pruned: filter pruning takes MLP hidden units only.
        classifier=("conv_proj", "heads.head"),
        block_types=(EncoderBlock,),
        stages=("encoder.layers",),
        feature_taps=(
            "encoder.layers.encoder_layer_3",
            "encoder.layers.encoder_layer_7",
            "encoder.ln",
        ),
        build=lambda nc, ic: build_vit_b_16(nc, ic),
    )


# -- ShuffleNetV2 ---------------------------------------------------------------------------
def _shufflenet_unit_cls():
    from torchvision.models.shufflenetv2 import InvertedResidual

    class ShuffleUnit(InvertedResidual):
        """torchvision's unit with the shuffle written as stack + flatten.

        ``channel_shuffle(cat(a, b), 2)`` puts ``a[i]`` at ``2i`` and ``b[i]`` at ``2i + 1``;
        ``stack((a, b), 2).flatten(1, 2)`` is the same tensor (bit for bit), but its
        view/transpose form makes torch-pruning's reshape index mapping divide by zero.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                a, b = x1, self.branch2(x2)
            else:
                a, b = self.branch1(x), self.branch2(x)
            return torch.stack((a, b), dim=2).flatten(1, 2)

    return ShuffleUnit


_SHUFFLENET_REPEATS = (4, 8, 4)
_SHUFFLENET_WIDTHS = (24, 244, 488, 976, 2048)


def _shufflenet_fixed_layers() -> tuple[str, ...]:
    """The classifier plus every conv writing into the shuffled channel stream.

    Those channels are permuted between units and split in two equal halves by the next
    unit, which torch-pruning cannot couple: pruning them builds a broken model. What stays
    prunable: each unit's branch2 hidden width, the stem and the final 1x1 conv.
    """
    names = ["fc"]
    for s, repeats in zip((2, 3, 4), _SHUFFLENET_REPEATS, strict=True):
        names.append(f"stage{s}.0.branch1.2")
        names.extend(f"stage{s}.{i}.branch2.5" for i in range(repeats))
    return tuple(names)


_SHUFFLENET_FIXED = _shufflenet_fixed_layers()


def _build_shufflenet(num_classes: int, in_chans: int) -> nn.Module:
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    model = ShuffleNetV2(
        list(_SHUFFLENET_REPEATS),
        list(_SHUFFLENET_WIDTHS),
        num_classes=num_classes,
        inverted_residual=_shufflenet_unit_cls(),
    )
    return replace_stem(model, "conv1.0", in_chans)


# -- ViT-B/16 -------------------------------------------------------------------------------
_paper_models()
