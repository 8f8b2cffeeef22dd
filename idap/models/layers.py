"""Layer surgery shared by the architecture builders."""

from __future__ import annotations

from torch import nn


def replace_stem(model: nn.Module, stem: str, in_chans: int) -> nn.Module:
    """Give the first conv ``in_chans`` input channels (a freshly initialised one).

    Grayscale datasets build their models with ``in_chans=1``; ``idap.models.weights`` then
    sums the pretrained RGB filters over the colour axis, which is exactly the RGB stem applied
    to the grey channel repeated three times, at a third of the stem's MACs.
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
