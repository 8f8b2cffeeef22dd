"""``create_model``: an architecture by registry name, fresh or from ImageNet weights."""

from __future__ import annotations

from torch import nn

from idap.models.registry import get_spec
from idap.models.weights import load_pretrained


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    *,
    pretrained: bool = False,
    weights_dir: str | None = None,
    keep_head: bool = False,
) -> nn.Module:
    """Build a model by registry name: freshly initialised, or from ImageNet weights.

    Args:
        pretrained: load torchvision's ImageNet weights (``idap.models.weights.load_pretrained``:
            local ``weights_dir`` first, then the hub cache, then a download); the
            classifier head stays freshly initialised for ``num_classes``.
        weights_dir: local directory of pretrained weight files.
        keep_head: load the checkpoint's classifier head too (``num_classes`` must match it).

    Raises:
        UnknownNameError: the name is not registered (message lists valid names).
        WeightsUnavailable: ``pretrained`` and no weights found (one line: what goes where).
    """
    spec = get_spec(name)
    model = spec.build(num_classes, in_chans)
    if pretrained:
        if "load_pretrained" in spec.extra:  # e.g. timm's own loader (idap.models.external)
            spec.extra["load_pretrained"](model, weights_dir, keep_head=keep_head)
        else:
            load_pretrained(name, model, weights_dir, keep_head=keep_head)
    return model
