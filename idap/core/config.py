"""Config loading and validation against the JSON schema, with defaults filled in.

Used by the Snakemake workflow (``rules/common.smk``) and the CLI alike, so a bad config
fails the same way everywhere: one line naming the key and the problem, before any job.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from idap.core.plugins import PluginError, load_plugins

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")
# a variant's own keys; the rest are config sections merged over the job's
VARIANT_KEYS = ("method", "label", "tuned_on_seeds")


class ConfigError(ValueError):
    """A config that does not match the schema; the message is one line."""


def load_schema() -> dict:
    """The schema, a copy of its one parse per process (every job reads it two or three
    times, and jobs start by the hundred)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


Validator = _with_defaults(jsonschema.Draft7Validator)


def validate_config(config: dict[str, Any] | None, plugins: bool = True) -> dict[str, Any]:
    """Validate ``config`` in place, fill defaults, and return it.

    ``plugins``: import the config's plugins (False: the workflow's planner, which reads
    their names from :func:`idap.core.names.name_index` instead).

    Raises:
        ConfigError: one line, e.g. ``config: prune.stpes: unknown key`` .
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"config: expected a mapping at the top level, got {type(config).__name__}"
        )
    schema = load_schema()
    errors = sorted(Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        raise ConfigError("config: " + "; ".join(describe(e) for e in errors[:5]))
    _check_values(config, "config: ")
    try:
        if plugins:
            load_plugins(config["plugins"])
        else:
            missing = [p for p in config["plugins"] if p.endswith(".py") and not Path(p).is_file()]
            if missing:
                raise PluginError(f"plugin file {missing[0]} not found (from {Path.cwd()})")
    except PluginError as e:
        raise ConfigError(f"config: plugins: {e}") from None
    for key, kwarg in (("dataset_overrides", "dataset"), ("overrides", "model")):
        for name in config[key]:
            if "mode" in config[key][name].get("prune", {}):
                raise ConfigError(
                    f"config: {key}.{name}: prune.mode is one per config (a budget search "
                    "and a target-mode run need different jobs)"
                )
            merged = for_model(config, **{kwarg: name})
            errors = sorted(Validator(schema).iter_errors(merged), key=lambda e: list(e.path))
            if errors:
                raise ConfigError(f"config: {key}.{name}: " + "; ".join(map(describe, errors)))
            _check_values(merged, f"config: {key}.{name}: ")
    _check_variants(config, schema)
    return config


def _check_values(config: dict[str, Any], where: str) -> None:
    """What the schema cannot say: keys that only make sense together."""
    backend, timed = config["report"]["latency_backend"], config["latency"]["backends"]
    if backend not in timed:
        raise ConfigError(
            f"{where}report.latency_backend: {backend!r} is not timed "
            f"(latency.backends: {', '.join(timed)})"
        )
    b = config["baseline"]
    if b["keep_head"] and not b["pretrained"]:
        raise ConfigError(f"{where}baseline.keep_head needs baseline.pretrained (a head to keep)")
    if b["epochs"] == 0 and not (b["pretrained"] and b["keep_head"]):
        raise ConfigError(
            f"{where}baseline.epochs: 0 trains nothing; it needs baseline.pretrained and "
            "baseline.keep_head (a checkpoint evaluated as it is)"
        )
    t = config["truncate"]
    if t["acceptance"] == "equal_macs" and t["recovery_iters"] == 1:
        raise ConfigError(
            f"{where}truncate.recovery_iters: 1 cannot be split between a removal and its "
            "equal-MAC filter branch (truncate.acceptance: equal_macs); use 0 or at least 2"
        )


def for_model(
    config: dict[str, Any],
    model: str | None = None,
    dataset: str | None = None,
    method: str | None = None,
) -> dict[str, Any]:
    """The config as one job sees it: the dataset's ``dataset_overrides``, then the model's
    ``overrides``, then the method's entry in ``variants``, merged over the sections (a
    later one wins key by key)."""
    variant = config.get("variants", {}).get(method) if method else None
    layers = [
        config.get("dataset_overrides", {}).get(dataset) if dataset else None,
        config.get("overrides", {}).get(model) if model else None,
        {k: v for k, v in variant.items() if k not in VARIANT_KEYS} if variant else None,
    ]
    if not any(layers):
        return config
    merged = copy.deepcopy(config)
    for overrides in filter(None, layers):
        for section, values in overrides.items():
            merged[section] = {**merged.get(section, {}), **values}
    merged["overrides"], merged["dataset_overrides"], merged["variants"] = {}, {}, {}
    return merged


def _budget(config: dict[str, Any]) -> tuple:
    """What fixes a run's post-dense training (docs/method.md §2)."""
    p = config["prune"]
    return p["steps"] * p["recovery_iters"], config["finetune"]["epochs"]


def _check_variants(config: dict[str, Any], schema: dict) -> None:
    """A variant's merged settings are valid and train as much as its base, on every model
    and dataset of the grid (a per-model or per-dataset override can change the base's
    budget; an override of a model the grid does not run cannot)."""
    grid = config.get("grid", {})
    places = [(d, m) for d in grid.get("datasets") or [None] for m in grid.get("models") or [None]]
    for name, variant in config.get("variants", {}).items():
        where = f"config: variants.{name}: "
        if "mode" in variant.get("prune", {}):
            raise ConfigError(f"{where}prune.mode is one per config")
        merged = for_model(config, method=name)
        errors = sorted(Validator(schema).iter_errors(merged), key=lambda e: list(e.path))
        if errors:
            raise ConfigError(where + "; ".join(map(describe, errors)))
        _check_values(merged, where)
        for dataset, model in places:
            base = _budget(for_model(config, model, dataset))
            mine = _budget(for_model(config, model, dataset, name))
            if mine != base:
                on = " and ".join(
                    f"{k} {v}" for k, v in (("dataset", dataset), ("model", model)) if v
                )
                (i0, e0), (i1, e1) = base, mine
                raise ConfigError(
                    f"{where}changes the post-dense training budget{' on ' + on if on else ''}"
                    f" (prune.steps x prune.recovery_iters {i0} -> {i1}, finetune.epochs "
                    f"{e0} -> {e1}); a variant trains as much as every other method: keep both"
                )


def describe(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "<top>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        valid = ", ".join(sorted(err.schema.get("properties", {})))
        return f"{where}: unknown key {', '.join(map(repr, extra))} (valid: {valid})"
    if err.validator == "enum":
        valid = ", ".join(map(str, err.validator_value))
        return f"{where}: {err.instance!r} is not a valid choice (valid: {valid})"
    return f"{where}: {err.message}"


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it (defaults filled)."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {what}") from None
    return validate_config(cfg)
