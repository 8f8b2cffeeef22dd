"""Config loading and validation against the JSON schema, with defaults filled in.

Used by the Snakemake workflow (``rules/common.smk``) and the CLI alike, so a bad config
fails the same way everywhere: one line naming the key and the problem, before any job.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")


class ConfigError(ValueError):
    """A config that does not match the schema; the message is one line."""


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def validate_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``config`` in place, fill defaults, and return it.

    Raises:
        ConfigError: one line, e.g. ``config: prune.stpes: unknown key`` .
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"config: expected a mapping at the top level, got {type(config).__name__}"
        )
    errors = sorted(_Validator(load_schema()).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        raise ConfigError("config: " + "; ".join(_describe(e) for e in errors[:5]))
    return config


def _describe(err: jsonschema.ValidationError) -> str:
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
        raise ConfigError(
            f"config file {path} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    return validate_config(cfg)


def section(name: str, overrides: dict | None = None) -> dict[str, Any]:
    """One config section with defaults filled (for CLI use outside Snakemake)."""
    cfg = validate_config({name: dict(overrides or {})})
    return cfg[name]
