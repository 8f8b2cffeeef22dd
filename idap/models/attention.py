"""ViT-B/16 with attention heads that hooks and torch-pruning can address."""

from __future__ import annotations

import torch
from torch import nn

from idap.models.layers import replace_stem


class HeadAttention(nn.Module):
    """Self-attention with the parameters of ``nn.MultiheadAttention`` in timm's layout.

    ``nn.MultiheadAttention`` hands its fused in-projection to one kernel, so no hook sees a
    head's output and torch-pruning cannot remove a head. Here the same computation runs as
    a fused ``qkv`` Linear (rows: q, k, v, each heads × head_dim, as in ``in_proj_weight``),
    scaled dot-product attention and an output ``proj`` Linear: heads are scored and pruned
    like timm's. ``idap.models.weights`` renames torchvision's keys (in_proj_* → qkv.*,
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

        replace_stem(model, "conv_proj", in_chans)
        fan_in = in_chans * 16 * 16
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model
