"""Typed settings: each config section a frozen dataclass whose fields are the schema's keys.

The classes are built from ``schema.yaml`` itself, so a key added there is a field here with
no second list to update. A config is validated once (:func:`Settings.from_config`); code
below that reads ``settings.prune.steps``, never ``cfg["prune"]["steps"]``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from idap.core.config import for_model, load_schema, validate_config

_PY_TYPES = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "array": list,
    "object": dict,
}
# Top-level sections the workflow uses to plan jobs; stages never read them.
_WORKFLOW_ONLY = ("grid", "overrides", "dataset_overrides", "variants")


def _py_type(prop: dict) -> Any:
    kind = prop.get("type")
    if isinstance(kind, list):  # e.g. [integer, "null"]
        return Any
    return _PY_TYPES.get(kind, Any)


def _build_types() -> tuple[dict[str, type], list[tuple[str, Any]]]:
    schema = load_schema()["properties"]
    sections, scalars = {}, []
    for key, prop in schema.items():
        if key in _WORKFLOW_ONLY:
            continue
        if prop.get("type") == "object":
            fields = [(k, _py_type(v)) for k, v in prop["properties"].items()]
            name = "".join(part.title() for part in key.split("_")) + "Settings"
            sections[key] = dataclasses.make_dataclass(name, fields, frozen=True)
            sections[key].__module__ = __name__
        else:
            scalars.append((key, _py_type(prop)))
    return sections, scalars


SECTION_TYPES, _SCALARS = _build_types()
SECTIONS = tuple(SECTION_TYPES)


def _from_config(
    cls,
    config: dict | None = None,
    model: str | None = None,
    dataset: str | None = None,
    partial: bool = False,
    method: str | None = None,
):
    """Validate ``config`` (defaults filled) and build typed settings, as a job on ``model``
    and ``dataset`` sees them (their ``dataset_overrides`` and ``overrides`` merged, then
    ``method``'s entry in ``variants``);
    ``partial``: only some sections, cut from a config validated whole.

    Raises:
        ConfigError: one line naming the key and the problem.
    """
    cfg = validate_config(copy.deepcopy(config or {}), partial)
    cfg = for_model(cfg, model, dataset, method)
    values = {k: cfg[k] for k, _ in _SCALARS}
    values.update({s: SECTION_TYPES[s](**cfg[s]) for s in SECTIONS})
    return cls(**values)


def _to_dict(self) -> dict[str, Any]:
    """Plain JSON-able mapping (for checkpoint keys and records)."""
    return dataclasses.asdict(self)


def _replace(self, **sections: dict) -> Settings:
    """A copy with some keys of some sections replaced: ``s.replace(prune={"steps": 1})``."""
    out = {}
    for name, values in sections.items():
        if name in SECTION_TYPES:
            out[name] = dataclasses.replace(getattr(self, name), **values)
        else:
            out[name] = values
    return dataclasses.replace(self, **out)


Settings = dataclasses.make_dataclass(
    "Settings",
    _SCALARS + [(s, SECTION_TYPES[s]) for s in SECTIONS],
    frozen=True,
    namespace={
        "__doc__": "Every setting a stage reads: the scalars (seed, device) and one typed "
        "section per config section (data, baseline, prune, truncate, finetune, latency).",
        "from_config": classmethod(_from_config),
        "to_dict": _to_dict,
        "replace": _replace,
    },
)
Settings.__module__ = __name__
