"""Model artifacts as data: architecture name + JSON record of edits + safetensors weights.

A structurally pruned model is rebuilt by creating the fresh architecture, replaying the
recorded block replacements (``replaced``: identity; ``projected``: a fitted 1x1 conv
projection, docs/method.md §3 variant), then resizing every parameter/buffer to the stored shape and
fixing the layer attributes that depend on it. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from idap.core.io import atomic_path, sha256_file, write_json
from idap.models import create_model

FORMAT = "idap-model/1"


class ArtifactError(RuntimeError):
    """A model artifact is missing, corrupted or inconsistent; the message names the file."""


def _paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(prefix)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_suffix(".json"), p.with_suffix(".safetensors")


def save_model(model: nn.Module, prefix: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``prefix.safetensors`` then ``prefix.json`` (the JSON last: it marks completion).

    Args:
        model: the (possibly pruned) model.
        prefix: path without suffix, or the .json path.
        record: must hold ``arch``, ``num_classes``, ``in_chans``; ``edits`` (list),
            ``replaced`` (module names swapped for identity) and ``projected`` (module name
            -> ``{"in", "out", "stride", "relu"}`` of a 1x1 conv projection that replaced
            it, see ``projection_module``) are kept as given.

    Returns:
        The JSON path.
    """
    json_path, st_path = _paths(prefix)
    for key in ("arch", "num_classes", "in_chans"):
        if key not in record:
            raise ValueError(f"model record lacks {key!r}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(st_path) as tmp:
        save_file(state, str(tmp))
    rec = dict(record)
    rec.setdefault("edits", [])
    rec.setdefault("replaced", [])
    rec.update(
        format=FORMAT,
        weights=st_path.name,
        weights_sha256=sha256_file(st_path),
        params=sum(p.numel() for p in model.parameters()),
    )
    write_json(json_path, rec)
    return json_path


def read_record(prefix: str | os.PathLike) -> dict[str, Any]:
    json_path, _ = _paths(prefix)
    try:
        with open(json_path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise ArtifactError(f"model record not found: {json_path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"model record {json_path} is not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise ArtifactError(f"{json_path} is not an idap model record (JSON {type(rec).__name__})")
    if rec.get("format") != FORMAT:
        raise ArtifactError(
            f"{json_path} is not an idap model record (format {rec.get('format')!r})"
        )
    missing = [
        k for k in ("arch", "num_classes", "in_chans", "weights", "weights_sha256") if k not in rec
    ]
    if missing:
        raise ArtifactError(f"model record {json_path} lacks {', '.join(map(repr, missing))}")
    return rec


def load_model(prefix: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model by replaying its record on a fresh architecture.

    Raises:
        ArtifactError: missing/corrupt record or weights (hash mismatch names the file).
    """
    json_path, st_path = _paths(prefix)
    rec = read_record(json_path)
    st_path = json_path.parent / rec["weights"]
    if not st_path.exists():
        raise ArtifactError(f"weights file missing: {st_path}")
    digest = sha256_file(st_path)
    if digest != rec["weights_sha256"]:
        raise ArtifactError(f"weights file {st_path} does not match its record (sha256 differs)")
    try:
        state = load_file(str(st_path))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"cannot read weights {st_path}: {e}") from None
    model = create_model(rec["arch"], rec["num_classes"], rec["in_chans"])
    for name in rec.get("replaced", []):
        model.set_submodule(name, nn.Identity())
    for name, p in recorded_projections(rec).items():
        try:
            if not isinstance(p["relu"], bool):
                raise TypeError(f"relu must be true or false, got {p['relu']!r}")
            c_in, c_out, stride = (int(p[k]) for k in ("in", "out", "stride"))
            if min(c_in, c_out, stride) < 1:
                raise ValueError("in, out and stride must be positive")
            model.set_submodule(name, projection_module(c_in, c_out, stride, p["relu"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(
                f"model record {json_path}: cannot rebuild projection {name!r} ({e!r})"
            ) from None
    resize_to_state(model, state)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, rec


def projection_module(c_in: int, c_out: int, stride: int, relu: bool) -> nn.Sequential:
    """The module that replaces a shape-changing block (``truncate.replace: projection``):
    a 1x1 conv with bias at the block's stride, followed by ReLU when the block's outputs
    were non-negative. Its weights come from the fit (or, on load, from the safetensors)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, stride, bias=True)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def recorded_projections(rec: dict[str, Any]) -> dict[str, dict]:
    """Block name -> projection settings, from the record's ``projected`` and, for records
    written by a stage that keeps only ``edits`` (filter pruning after truncation), from the
    edits that carry a ``projection``."""
    edits = rec.get("edits")
    out = {
        e["projected"]: e["projection"]
        for e in (edits if isinstance(edits, list) else [])
        if isinstance(e, dict) and isinstance(e.get("projected"), str) and "projection" in e
    }
    projected = rec.get("projected") or {}
    if not isinstance(projected, dict):
        raise ArtifactError(f"model record field 'projected' is not an object: {projected!r}")
    out.update(projected)
    return out


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter/buffer the stored shape and fix shape-dependent attributes."""
    touched: set[nn.Module] = set()
    for key, tensor in state.items():
        mod_name, _, attr = key.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        if attr in module._parameters and module._parameters[attr] is not None:
            if module._parameters[attr].shape != tensor.shape:
                module._parameters[attr] = nn.Parameter(torch.empty_like(tensor))
                touched.add(module)
        elif attr in module._buffers and module._buffers[attr] is not None:
            if module._buffers[attr].shape != tensor.shape:
                module._buffers[attr] = torch.empty_like(tensor)
                touched.add(module)
    for module in touched:
        _fix_attributes(module)
    for module in model.modules():  # timm-style attention: head count follows qkv's rows
        qkv = getattr(module, "qkv", None)
        if qkv in touched and hasattr(module, "num_heads") and hasattr(module, "head_dim"):
            module.num_heads = qkv.out_features // (3 * module.head_dim)
            if hasattr(module, "attn_dim"):
                module.attn_dim = module.num_heads * module.head_dim


def _fix_attributes(m: nn.Module) -> None:
    if isinstance(m, nn.modules.conv._ConvNd):
        out_c, in_per_group = m.weight.shape[:2]
        if m.groups > 1:  # depthwise/grouped: the group count follows the channel count
            m.groups = max(1, out_c * m.groups // m.out_channels)
        m.out_channels, m.in_channels = out_c, in_per_group * m.groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        m.num_features = (
            m.running_mean.shape[0] if m.running_mean is not None else m.weight.shape[0]
        )
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = m.weight.shape[0]
