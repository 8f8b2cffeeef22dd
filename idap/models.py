"""Model registry: architecture name -> builder plus what pruning needs to know about it.

Each entry says which layers must never be pruned (the classifier), which block types are
candidates for layer truncation, how blocks group into stages (keep >= 1 per stage) and which
modules are the feature taps used by the recovery distillation loss.

Two families: small CIFAR-style ResNets trained from scratch on a CPU (``resnet_tiny``,
``resnet_micro``), and the paper grid's ten torchvision ImageNet architectures, which start
from torchvision's ImageNet weights (``create_model(..., pretrained=True)``, ``idap.weights``;
choices per model in docs/paper_grid.md).
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
            ``torchvision_weights`` (the pretrained weights enum used by ``idap.weights``).
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


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    *,
    pretrained: bool = False,
    weights_dir: str | None = None,
) -> nn.Module:
    """Build a model by registry name: freshly initialised, or from ImageNet weights.

    Args:
        pretrained: load torchvision's ImageNet weights (``idap.weights.load_pretrained``:
            local ``weights_dir`` first, then the hub cache, then a download); the
            classifier head stays freshly initialised for ``num_classes``.
        weights_dir: local directory of pretrained weight files.

    Raises:
        UnknownNameError: the name is not registered (message lists valid names).
        WeightsUnavailable: ``pretrained`` and no weights found (one line: what goes where).
    """
    model = get_spec(name).build(num_classes, in_chans)
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(name, model, weights_dir)
    return model


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
# The paper grid: ten ImageNet architectures, all from torchvision (see docs/paper_grid.md).
#
# Every builder returns torchvision's own module tree, so torchvision's ImageNet state dicts
# load by key (idap.weights). Two forwards are rewritten in a numerically identical form that
# torch-pruning can trace (ShuffleNetV2's channel shuffle, ViT's attention output projection);
# neither changes a parameter name or shape.
# ------------------------------------------------------------------------------------------


def _adapt_stem(model: nn.Module, stem: str, in_chans: int) -> nn.Module:
    """Give the first conv ``in_chans`` input channels (a freshly initialised one).

    Grayscale datasets build their models with ``in_chans=1``; ``idap.weights`` then sums the
    pretrained RGB filters over the colour axis, which is exactly the RGB stem applied to the
    grey channel repeated three times, at a third of the stem's MACs.
    """
    if in_chans == 3:
        return model
    old = model.get_submodule(stem)
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        old.bias is not None,
        old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    model.set_submodule(stem, new)
    return model


def _taps(stages: tuple[str, ...]) -> tuple[str, str, str]:
    """First, middle and last stage outputs: the recovery distillation taps (METHOD §2)."""
    return stages[0], stages[len(stages) // 2], stages[-1]


def _tv(name: str, stem: str, **kwargs) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
        return _adapt_stem(model, stem, in_chans)

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
            transform_input=False,  # idap.weights folds torchvision's input transform
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
    return _adapt_stem(model, "conv1.0", in_chans)


# -- ViT-B/16 -------------------------------------------------------------------------------
class HeadAttention(nn.Module):
    """Self-attention with the parameters of ``nn.MultiheadAttention`` in timm's layout.

    ``nn.MultiheadAttention`` hands its fused in-projection to one kernel, so no hook sees a
    head's output and torch-pruning cannot remove a head. Here the same computation runs as
    a fused ``qkv`` Linear (rows: q, k, v, each heads × head_dim, as in ``in_proj_weight``),
    scaled dot-product attention and an output ``proj`` Linear: heads are scored and pruned
    like timm's. ``idap.weights`` renames torchvision's keys (in_proj_* → qkv.*,
    out_proj.* → proj.*); the call signature is MultiheadAttention's, self-attention only.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query, key=None, value=None, need_weights: bool = False):
        if need_weights:
            raise ValueError("HeadAttention does not return attention weights")
        B, N, _ = query.shape
        qkv = self.qkv(query).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        o = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)), None


def build_vit_b_16(num_classes: int, in_chans: int, image_size: int = 224) -> nn.Module:
    """torchvision ViT-B/16; ``image_size`` sets the position-embedding length.

    The registry builds it at 224 (its weights' resolution). The input check compares the
    patch grid with the position embedding rather than with ``image_size``, so a model
    rebuilt from an artifact (whose stored embedding fixes the token count) runs at the
    resolution it was saved for.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    class ViT(VisionTransformer):
        def _process_input(self, x: torch.Tensor) -> torch.Tensor:
            n, _c, h, w = x.shape
            p = self.patch_size
            tokens = self.encoder.pos_embedding.shape[1] - 1
            torch._assert(
                h % p == 0 and w % p == 0 and (h // p) * (w // p) == tokens,
                f"input {h}x{w} does not match the {tokens}-patch position embedding",
            )
            x = self.conv_proj(x)
            return x.reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)

    model = ViT(
        image_size=image_size,
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=num_classes,
    )
    for layer in model.encoder.layers:
        layer.self_attention = HeadAttention(768, 12)
    if in_chans != 3:
        import math

        _adapt_stem(model, "conv_proj", in_chans)
        fan_in = in_chans * 16 * 16
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model


_paper_models()
