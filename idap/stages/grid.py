"""The grid's names checked against the registries, after the config's plugins loaded.

The schema cannot list the valid names: a plugin adds to them. The workflow's planner and
every CLI command call :func:`check_grid` once, before any work, so a misspelt model fails
in the first second with the list of valid names instead of in a job's log.
"""

from __future__ import annotations

from idap.core.config import ConfigError
from idap.core.registry import UnknownNameError


def live_lookup(kind: str, name: str) -> None:
    """Check ``name`` against the live registry of ``kind`` (imports the model and dataset
    modules, hence torch; the planner uses :func:`idap.core.names.lookup` instead)."""
    import idap.data  # noqa: F401  (registers the built-in datasets)
    import idap.models  # noqa: F401  (registers the built-in models)
    from idap.data.registry import DATASETS
    from idap.engine.methods import get_method
    from idap.models.registry import get_spec

    {"model": get_spec, "dataset": DATASETS.get, "method": get_method}[kind](name)


def check_grid(config: dict, lookup=live_lookup) -> None:
    """Every dataset, model and method of ``config["grid"]`` and every key of its
    ``overrides``/``dataset_overrides`` is a registered name (plugins already loaded by
    :func:`~idap.core.config.validate_config`, or indexed); the config's ``variants`` are
    registered as methods first.

    Args:
        lookup: ``lookup(kind, name)`` raises :class:`UnknownNameError` for a name that is
            not registered (kind: model, dataset or method).

    Raises:
        ConfigError: one line naming the key, the name and the valid names.
    """
    from idap.engine.methods import candidates, register_variants

    try:
        register_variants(config["variants"])
    except (UnknownNameError, ValueError) as e:
        raise ConfigError(f"config: {e}") from None

    lookups = {
        "grid.datasets": (config["grid"]["datasets"], "dataset"),
        "grid.models": (config["grid"]["models"], "model"),
        "grid.methods": (config["grid"]["methods"], "method"),
        "overrides": (list(config["overrides"]), "model"),
        "dataset_overrides": (list(config["dataset_overrides"]), "dataset"),
    }
    for name in config["grid"]["methods"]:
        chosen_on = set(config["variants"].get(name, {}).get("tuned_on_seeds", ()))
        if chosen_on & set(config["grid"]["seeds"]):
            raise ConfigError(
                f"config: variants.{name} was chosen on seed(s) "
                f"{sorted(chosen_on & set(config['grid']['seeds']))}, which grid.seeds "
                "reports; report on seeds the tuning never saw"
            )
    if config["report"]["tuning"]:
        try:
            if not candidates(config["variants"], config["grid"]["methods"]):
                raise ValueError("no variant in grid.methods: nothing to tune")
        except ValueError as e:
            raise ConfigError(f"config: report.tuning: {e}") from None
    ref = config["report"]["reference"]
    if ref != "idap" and ref not in config["grid"]["methods"]:
        raise ConfigError(
            f"config: report.reference: {ref!r} is not in grid.methods "
            f"({', '.join(config['grid']['methods'])}); its paired differences would be empty"
        )
    for key, (names, kind) in lookups.items():
        for name in names:
            try:
                lookup(kind, name)
            except UnknownNameError as e:
                hint = ""
                if key == "grid.methods" and name.endswith("_tuned"):
                    hint = (
                        f" ({name} is written by a tuning run to results/tuning/tuned.yaml: "
                        "pass that file with --configfile too)"
                    )
                raise ConfigError(f"config: {key}: {e}{hint}") from None
