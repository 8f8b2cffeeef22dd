"""Typed settings: each config section a frozen dataclass whose fields are the schema's keys.

The classes are built from ``schema.yaml`` itself, so a key added there is a field here with
no second list to update. A config is validated once (:func:`Settings.from_config`); code
below that reads ``settings.prune.steps``, never ``cfg["prune"]["steps"]``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from idap.core.config import (
    ConfigError,
    Validator,
    describe,
    for_model,
    load_schema,
    validate_config,
)
from idap.core.plugins import PluginError, load_plugins

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


class SettingNotPassed(ConfigError):
    """A job read a setting its rule did not pass it (no schema default stands in)."""


class _NotPassed:
    """The value of a setting a job was not given: reading it raises."""

    __slots__ = ("name", "job")

    def __init__(self, name: str, job: str):
        self.name, self.job = name, job

    def __repr__(self) -> str:
        return f"<{self.name}: not passed to {self.job}>"


def _getattribute(self, name: str):
    value = object.__getattribute__(self, name)
    if type(value) is _NotPassed:
        raise SettingNotPassed(
            f"{value.job} read settings.{value.name}, which its rule did not pass (add it to "
            f"the stage's reads in idap/stages/registry.py)"
        )
    return value


def _fields(obj) -> dict[str, Any]:
    return {f.name: object.__getattribute__(obj, f.name) for f in dataclasses.fields(obj)}


def _plain(obj) -> dict[str, Any]:
    """The given values of a settings object, nested sections as dicts."""
    return {
        k: _plain(v) if dataclasses.is_dataclass(v) else v
        for k, v in _fields(obj).items()
        if type(v) is not _NotPassed
    }


def _with(obj, **changes):
    return type(obj)(**{**_fields(obj), **changes})


def _repr(obj) -> str:
    return f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in _fields(obj).items())})"


# What a settings object and its sections share: reading a setting not passed raises.
_GUARDED = {
    "__getattribute__": _getattribute,
    "__repr__": _repr,
    "__eq__": lambda self, other: type(other) is type(self) and _plain(self) == _plain(other),
    "__hash__": None,
}


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
            sections[key] = dataclasses.make_dataclass(
                name, fields, frozen=True, repr=False, eq=False, namespace=dict(_GUARDED)
            )
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
    method: str | None = None,
):
    """Validate a whole ``config`` (defaults filled) and build typed settings, as a job on
    ``model`` and ``dataset`` sees them (their ``dataset_overrides`` and ``overrides``
    merged, then ``method``'s entry in ``variants``).

    Raises:
        ConfigError: one line naming the key and the problem.
    """
    cfg = validate_config(copy.deepcopy(config or {}))
    cfg = for_model(cfg, model, dataset, method)
    values = {k: cfg[k] for k, _ in _SCALARS}
    values.update({s: SECTION_TYPES[s](**cfg[s]) for s in SECTIONS})
    return cls(**values)


def _for_job(cls, given: dict, job: str):
    """The settings of one workflow job: ``given`` holds what its stage reads
    (``idap.stages.registry``: whole sections, or single keys of one), cut by the planner
    from a config validated whole and merged for the job's dataset, model and method. Every
    other setting raises when read, naming it: a job never falls back on a schema default its
    config did not choose.

    Raises:
        ConfigError: an unknown or invalid key in ``given``.
    """
    schema = load_schema()["properties"]
    unknown = sorted(set(given) - {k for k, _ in _SCALARS} - set(SECTIONS) - {"plugins"})
    if unknown:
        raise ConfigError(f"{job}: settings: unknown key(s) {', '.join(unknown)}")
    try:  # the config's plugins: the names a job runs may be theirs
        load_plugins(given.get("plugins", ()))
    except PluginError as e:
        raise ConfigError(f"{job}: plugins: {e}") from None
    values: dict[str, Any] = {}
    for key, _ in _SCALARS:
        values[key] = given[key] if key in given else _NotPassed(key, job)
    for name in SECTIONS:
        if name not in given:
            values[name] = _NotPassed(name, job)
            continue
        section = given[name]
        errors = list(Validator(schema[name]).iter_errors(copy.deepcopy(section)))
        if errors:
            raise ConfigError(f"{job}: settings: {name}: " + "; ".join(map(describe, errors)))
        keys = schema[name]["properties"]
        values[name] = SECTION_TYPES[name](
            **{k: section[k] if k in section else _NotPassed(f"{name}.{k}", job) for k in keys}
        )
    return cls(**values)


def _to_dict(self) -> dict[str, Any]:
    """Plain JSON-able mapping of the settings given (for checkpoint keys and records)."""
    return _plain(self)


def _replace(self, **sections: dict) -> Settings:
    """A copy with some keys of some sections replaced: ``s.replace(prune={"steps": 1})``."""
    values = _fields(self)
    for name, new in sections.items():
        values[name] = _with(getattr(self, name), **new) if name in SECTION_TYPES else new
    return type(self)(**values)


Settings = dataclasses.make_dataclass(
    "Settings",
    _SCALARS + [(s, SECTION_TYPES[s]) for s in SECTIONS],
    frozen=True,
    repr=False,
    eq=False,
    namespace={
        "__doc__": "Every setting a stage reads: the scalars (seed, device) and one typed "
        "section per config section (data, baseline, prune, truncate, finetune, latency).",
        "from_config": classmethod(_from_config),
        "for_job": classmethod(_for_job),
        "to_dict": _to_dict,
        "replace": _replace,
        **_GUARDED,
    },
)
Settings.__module__ = __name__
