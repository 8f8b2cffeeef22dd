"""Any timm or torchvision classifier by name: ``timm:<name>`` and ``tv:<name>``.

What a registered :class:`ModelSpec` states by hand is read off the model here, with these
defaults (docs/own_models.md):

- **classifier** (never pruned): timm's ``pretrained_cfg["classifier"]``; torchvision: the
  last ``nn.Linear``.
- **stem**: timm's ``first_conv`` (timm adapts it to grey inputs itself); torchvision: the
  first ``nn.Conv2d``, replaced for ``in_chans != 3``.
- **truncation candidates**: none. Stage 2 then finds nothing to remove, and IDAP++ closes
  its share of the target with filter steps. Register a spec (a plugin) to name blocks.
- **distillation taps**: timm's ``feature_info`` stages (first, middle, last); torchvision:
  none, so recovery trains on cross-entropy alone.
- **input size**: the dataset's own resolution.
- **pretrained weights**: timm's own loader (its hub cache; ``HF_HUB_OFFLINE=1`` keeps it
  offline); torchvision's ``DEFAULT`` weights through :mod:`idap.models.weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from idap.core.registry import UnknownNameError
from idap.models.layers import replace_stem
from idap.models.registry import MODELS, ModelSpec


def _meta(build) -> nn.Module:
    """Build on the meta device: reading a spec off a model allocates nothing."""
    with torch.device("meta"):
        return build()


def _last(model: nn.Module, kind: type) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, kind)]
    return names[-1] if names else None


def _first(model: nn.Module, kind: type) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, kind)), None)


def timm_spec(name: str) -> ModelSpec:
    import timm

    if not timm.is_model(name):
        raise UnknownNameError(f"unknown model 'timm:{name}': timm has no model {name!r}")

    def build(num_classes: int, in_chans: int) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    probe = _meta(lambda: build(10, 3))
    cfg = dict(probe.pretrained_cfg)
    head = cfg.get("classifier")
    head = head[0] if isinstance(head, (list, tuple)) else head
    if not head or not isinstance(probe.get_submodule(head), nn.Linear):
        head = _last(probe, nn.Linear)
    if head is None:
        raise UnknownNameError(f"model 'timm:{name}' has no linear classifier to keep")
    stages = [f["module"] for f in getattr(probe, "feature_info", []) if f.get("module")]
    taps = (stages[0], stages[len(stages) // 2], stages[-1]) if len(stages) >= 3 else ()

    def load(model: nn.Module, weights_dir=None, keep_head: bool = False) -> str:
        from timm.models import load_pretrained

        from idap.models.weights import WeightsUnavailable

        first = model.get_submodule(head)
        try:
            load_pretrained(
                model,
                num_classes=first.out_features if keep_head else 0,
                in_chans=model.get_submodule(cfg.get("first_conv", "")).in_channels
                if cfg.get("first_conv")
                else 3,
                strict=False,
            )
        except Exception as e:
            raise WeightsUnavailable(
                f"pretrained weights for 'timm:{name}' not loaded ({type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0][:160]}); fill timm's hub cache online first"
            ) from None
        return f"timm:{cfg.get('hf_hub_id') or name}"

    return ModelSpec(
        name=f"timm:{name}",
        build=build,
        classifier=(head,),
        feature_taps=taps,
        extra={
            "head": head,
            "stem": cfg.get("first_conv"),
            "library": "timm",
            "load_pretrained": load,
        },
    )


def torchvision_spec(name: str) -> ModelSpec:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UnknownNameError(
            f"unknown model 'tv:{name}': torchvision has no classification model {name!r}"
        )
    probe = _meta(lambda: torchvision.models.get_model(name, weights=None, num_classes=10))
    head, stem = _last(probe, nn.Linear), _first(probe, nn.Conv2d)
    if head is None or stem is None:
        raise UnknownNameError(f"model 'tv:{name}' has no linear classifier or no conv stem")

    def build(num_classes: int, in_chans: int) -> nn.Module:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return replace_stem(model, stem, in_chans)

    weights = torchvision.models.get_model_weights(name).DEFAULT
    return ModelSpec(
        name=f"tv:{name}",
        build=build,
        classifier=(head,),
        extra={
            "head": head,
            "stem": stem,
            "library": "torchvision",
            "torchvision_weights": f"{type(weights).__name__}.{weights.name}",
        },
    )


MODELS.register_prefix("timm", timm_spec)
MODELS.register_prefix("tv", torchvision_spec)
