"""The grid's names checked against the registries, after the config's plugins loaded.

The schema cannot list the valid names: a plugin adds to them. The workflow's planner and
every CLI command call :func:`check_grid` once, before any work, so a misspelt model fails
in the first second with the list of valid names instead of in a job's log.
"""

from __future__ import annotations

from idap.core.config import ConfigError
from idap.core.registry import UnknownNameError


def check_grid(config: dict) -> None:
    """Every dataset, model and method of ``config["grid"]`` and every key of its
    ``overrides``/``dataset_overrides`` is a registered name (plugins already loaded by
    :func:`~idap.core.config.validate_config`).

    Raises:
        ConfigError: one line naming the key, the name and the valid names.
    """
    import idap.data  # noqa: F401  (registers the built-in datasets)
    import idap.models  # noqa: F401  (registers the built-in models)
    from idap.data.registry import DATASETS
    from idap.engine.methods import get_method
    from idap.models.registry import get_spec

    lookups = {
        "grid.datasets": (config["grid"]["datasets"], DATASETS.get),
        "grid.models": (config["grid"]["models"], get_spec),
        "grid.methods": (config["grid"]["methods"], get_method),
        "overrides": (list(config["overrides"]), get_spec),
        "dataset_overrides": (list(config["dataset_overrides"]), DATASETS.get),
    }
    for key, (names, lookup) in lookups.items():
        for name in names:
            try:
                lookup(name)
            except UnknownNameError as e:
                raise ConfigError(f"config: {key}: {e}") from None
