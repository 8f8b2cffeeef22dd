"""Reading the planner's name index (:mod:`idap.core.names`) without building it.

Kept apart from the builder so that what imports it (every workflow job, through
:mod:`idap.workflow`) does not close over the registries the builder imports: a job's code
hash covers its import closure (:mod:`idap.core.codehash`), and editing a model or a
criterion must not rerun a report or a download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from importlib.metadata import entry_points
from pathlib import Path

from idap.core.codehash import package_digest
from idap.core.plugins import ENTRY_POINT_GROUP, plugin_files

_PLUGIN_METHODS = "plugins"  # the method registry's layer for methods known from the index


def _key(plugins) -> str:
    h = hashlib.sha256(package_digest().encode())
    for path in plugin_files(plugins):
        h.update(str(path).encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.value):
        h.update(f"{ep.name}={ep.value}".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    """Where the index is cached when the caller names no directory (module docstring)."""
    if os.environ.get("IDAP_CACHE_DIR"):
        return Path(os.environ["IDAP_CACHE_DIR"]) / "names"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "idap" / "names"
    try:
        return Path.home() / ".cache" / "idap" / "names"
    except RuntimeError:  # no home directory (a bare batch account): the run directory's
        return Path(".snakemake") / "idap-names"


def index_path(plugins=(), cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the index of this version of the package and ``plugins`` is cached."""
    return Path(cache_dir or default_cache_dir()) / f"{_key(plugins)}.json"


def cached_index(plugins=(), cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The current index if it is cached (its entry marked as used), else None."""
    path = index_path(plugins, cache_dir)
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return index


def use_index_methods(index: dict) -> None:
    """Make the index's methods that this process has not registered (a plugin's, when the
    plugin was not imported) resolvable, in a scoped layer of the method registry."""
    from idap.engine.methods import METHODS, Method

    fields = {f.name for f in dataclasses.fields(Method)}
    missing = {}
    for name, spec in index["method"].items():
        if name not in METHODS.names():
            spec = {k: v for k, v in spec.items() if k in fields}
            spec["stages"] = tuple(spec["stages"])
            spec["uses_prune_settings"] = tuple(spec["uses_prune_settings"])
            missing[name] = Method(**spec)
    METHODS.set_layer(_PLUGIN_METHODS, missing)
