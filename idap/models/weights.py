"""Pretrained starts: torchvision ImageNet weights for the paper-grid architectures.

``load_pretrained(name, model, weights_dir)`` looks for the state dict, in order:

1. ``<weights_dir>/<name>.safetensors`` (e.g. ``resnet50.safetensors``);
2. ``<weights_dir>/<name>.pth`` or ``<weights_dir>/<torchvision file name>`` (e.g.
   ``resnet50-11ad3fa6.pth``), a plain state dict;
3. torchvision's hub cache, ``$TORCH_HOME/hub/checkpoints/<torchvision file name>``;
4. a download into that cache (only when online; offline it fails at once).

``.pth`` files are read with ``torch.load(weights_only=True)``: tensors and containers only,
never arbitrary pickled objects. Offline with no file, the error is one line naming the file
and the places it may go.

The checkpoint is adapted to the registry's model: torchvision's legacy DenseNet keys are
renamed, Inception-v3's input transform is folded into its stem, the RGB stem is summed over
colour for grey inputs (identical to repeating the grey channel three times), and the
classifier head is left freshly initialised for the dataset's class count (``keep_head`` keeps
ImageNet's 1000-way head, for ImageNet itself).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from idap.models.registry import get_spec


class WeightsUnavailable(RuntimeError):
    """No pretrained state dict could be found or fetched; the message says what to place where."""


def torchvision_weights(name: str):
    """The torchvision weights enum member a paper-grid model starts from.

    Raises:
        UnknownNameError: unknown model; ValueError: the model has no pretrained weights.
    """
    spec = get_spec(name)
    key = spec.extra.get("torchvision_weights")
    if key is None:
        raise ValueError(f"model {name!r} has no pretrained weights (it trains from scratch)")
    from torchvision.models import get_weight

    return get_weight(key)


def weight_file_name(name: str) -> str:
    """torchvision's file name for the model's weights, e.g. ``resnet50-11ad3fa6.pth``."""
    return torchvision_weights(name).url.rsplit("/", 1)[-1]


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def candidate_paths(name: str, weights_dir: str | os.PathLike | None) -> list[Path]:
    """Where :func:`load_pretrained` looks, in order (the download goes to the last one)."""
    fname = weight_file_name(name)
    paths = []
    if weights_dir is not None:
        w = Path(weights_dir)
        paths += [w / f"{name}.safetensors", w / f"{name}.pth", w / fname]
    paths.append(hub_checkpoint_dir() / fname)
    return paths


def find_state_dict(
    name: str, weights_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """The raw torchvision state dict of model ``name`` and where it came from.

    Raises:
        WeightsUnavailable: nothing on disk and the download failed or was not allowed.
    """
    for path in candidate_paths(name, weights_dir):
        if path.is_file():
            return _read_state(path), str(path)
    w = torchvision_weights(name)
    if download:
        try:
            state = torch.hub.load_state_dict_from_url(
                w.url, model_dir=str(hub_checkpoint_dir()), progress=False, check_hash=True
            )
            return state, w.url
        except Exception as e:  # offline: URLError at once; a partial file: hash mismatch
            why = f"download failed (offline? {type(e).__name__})"
    else:
        why = "download disabled"
    fname = weight_file_name(name)
    where = Path(weights_dir) / f"{name}.pth" if weights_dir is not None else None
    first = f"{where} (or {where.with_suffix('.safetensors')}), or " if where else ""
    raise WeightsUnavailable(
        f"pretrained weights for {name!r} not found and {why}: place torchvision's {fname} "
        f"({w.url}) as {first}{hub_checkpoint_dir() / fname}"
    )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(
            f"cannot read pretrained weights {path} ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}); replace the file"
        ) from None
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path} is not a state dict of tensors; replace the file")
    return state


_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# torchvision's inception_v3 weights expect inputs in [-1, 1]; with ``transform_input`` it maps
# ImageNet-normalised inputs there: x_c' = x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5.
_INCEPTION_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
_INCEPTION_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)


def convert_state_dict(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite a torchvision state dict for the registry's version of the architecture."""
    state = dict(state)
    if name.removeprefix("tv:").startswith("densenet"):  # torchvision's loader renames these
        for key in list(state):
            m = _DENSENET_LEGACY.match(key)
            if m:
                state[m.group(1) + m.group(2)] = state.pop(key)
    if name == "inception_v3":
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        state = _fold_inception_transform(state)
    if name.startswith("vit_"):  # nn.MultiheadAttention -> idap.models.HeadAttention
        for key in list(state):
            for old, new in _VIT_ATTENTION_KEYS:
                if key.endswith(old):
                    state[key[: -len(old)] + new] = state.pop(key)
    return state


_VIT_ATTENTION_KEYS = (
    ("self_attention.in_proj_weight", "self_attention.qkv.weight"),
    ("self_attention.in_proj_bias", "self_attention.qkv.bias"),
    ("self_attention.out_proj.weight", "self_attention.proj.weight"),
    ("self_attention.out_proj.bias", "self_attention.proj.bias"),
)


def _fold_inception_transform(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold ``transform_input`` (a per-channel affine map) into the stem conv and its BN.

    conv(W, a*x + b) = conv(W*a, x) + sum(W*b) for an unpadded conv (Conv2d_1a_3x3 is), and the
    constant per-output-channel term moves into the BN's running mean: exact in eval mode.
    """
    w = state["Conv2d_1a_3x3.conv.weight"]
    scale = torch.tensor(_INCEPTION_SCALE, dtype=w.dtype).view(1, 3, 1, 1)
    shift = torch.tensor(_INCEPTION_SHIFT, dtype=w.dtype).view(1, 3, 1, 1)
    state["Conv2d_1a_3x3.conv.weight"] = w * scale
    offset = (w * shift).sum(dim=(1, 2, 3))
    state["Conv2d_1a_3x3.bn.running_mean"] = state["Conv2d_1a_3x3.bn.running_mean"] - offset
    return state


def adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB stem filters for ``in_chans`` inputs: summed for grey (= grey repeated 3x), else
    cycled over the colour axis and rescaled so the response to a uniform input is kept."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_pretrained(
    name: str,
    model: nn.Module,
    weights_dir: str | os.PathLike | None = None,
    *,
    keep_head: bool = False,
    download: bool = True,
) -> str:
    """Load torchvision's ImageNet weights into ``model`` (built by ``create_model(name, ...)``).

    Every parameter and buffer is loaded except the classifier head, which keeps the model's
    fresh initialisation for its own class count (``keep_head=True`` loads ImageNet's head
    instead; the model must then have 1000 classes).

    Returns:
        Where the weights came from (a path or the URL).

    Raises:
        WeightsUnavailable: no weights on disk and no download (one line: what to place where).
        ValueError: the checkpoint does not fit the architecture (names the keys).
    """
    spec = get_spec(name)
    state, source = find_state_dict(name, weights_dir, download)
    state = convert_state_dict(name, state)
    stem = spec.extra["stem"] + ".weight"
    own = model.state_dict()
    if stem in state and stem in own:
        state[stem] = adapt_stem(state[stem], own[stem].shape[1])
    head = spec.extra["head"]
    head_keys = {k for k in own if k.startswith(head + ".")}
    if not keep_head:
        state = {k: v for k, v in state.items() if k not in head_keys}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(
            f"pretrained weights {source} do not fit {name}: shape differs for "
            f"{', '.join(mismatched[:5])}"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    # old checkpoints (e.g. torchvision's DenseNet) predate BN's num_batches_tracked
    missing = [
        k
        for k in missing
        if (keep_head or k not in head_keys) and not k.endswith(".num_batches_tracked")
    ]
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights {source} do not fit {name}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return source
