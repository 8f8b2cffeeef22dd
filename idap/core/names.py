"""A torch-free index of the registries' names, for the workflow's planner.

Checking the grid's names against the live registries means importing every model and
dataset module (torch, torchvision, timm: seconds) and the config's plugins, at every
``snakemake`` call. The index is built that way once, then cached keyed by the hash of the
package's sources, the plugin files and the installed plugin entry points: any edit to one
of them rebuilds it, so it cannot drift from the registries. As it depends on nothing else,
one cache serves every working directory (a new run directory, or a test's, plans without
the imports): ``names/`` under ``$IDAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/idap``, else
``~/.cache/idap`` (with no home directory, the run directory's ``.snakemake/idap-names``).
It also keeps the plugins' methods (a method's stages decide the workflow's jobs), which the
planner puts in a scoped layer of the method registry without importing the plugin.
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
from idap.core.io import write_json
from idap.core.plugins import ENTRY_POINT_GROUP, load_plugins, plugin_files
from idap.core.registry import UnknownNameError

_PLUGIN_METHODS = "plugins"  # the method registry's layer for methods known from the index


def _key(plugins) -> str:
    h = hashlib.sha256(package_digest().encode())
    for path in plugin_files(plugins):
        h.update(str(path).encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.value):
        h.update(f"{ep.name}={ep.value}".encode())
    return h.hexdigest()[:20]


def _build(plugins) -> dict:
    """Import the registries and the plugins and list every name (the slow path)."""
    load_plugins(plugins)
    import idap.data  # noqa: F401  (registers the built-in datasets)
    import idap.engine.criteria  # noqa: F401  (registers the criteria)
    import idap.models  # noqa: F401  (registers the built-in models)
    from idap.data.registry import DATASETS
    from idap.engine.criterion import CRITERIA
    from idap.engine.methods import METHODS
    from idap.engine.sparse import RULES
    from idap.models.registry import MODELS

    return {
        "model": MODELS.names(),
        "model_prefixes": sorted(MODELS._prefixes),
        "dataset": DATASETS.names(),
        "criterion": CRITERIA.names(),
        "mask rule": RULES.names(),
        "method": {n: dataclasses.asdict(METHODS.get(n)) for n in METHODS.names()},
    }


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


KEEP = 32  # cached indexes kept: every edit of the code makes a new one


def name_index(plugins=(), cache_dir: str | os.PathLike | None = None) -> dict:
    """The names of every registry (plugins included), from the cache when it is current.
    A cache that cannot be written (a read-only home) only costs the rebuild next time.
    Each use marks its entry; a new entry evicts all but the :data:`KEEP` last used."""
    path = Path(cache_dir or default_cache_dir()) / f"{_key(plugins)}.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    else:
        with contextlib.suppress(OSError):
            os.utime(path)
        return index
    index = _build(plugins)
    try:
        write_json(path, index)
        _evict(path.parent)
    except OSError:
        pass
    return index


def _evict(cache: Path) -> None:
    def used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # another planner evicted it first
            return 0.0

    for old in sorted(cache.glob("*.json"), key=used, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)


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


def lookup(index: dict):
    """``check(kind, name)``, raising :class:`UnknownNameError` like the live registries;
    a prefixed model name (``timm:``, ``tv:``) is resolved by the live registry."""

    def check(kind: str, name: str) -> None:
        if kind == "model" and name.partition(":")[0] in index["model_prefixes"]:
            from idap.models.registry import get_spec

            get_spec(name)
            return
        names = index[kind]
        if name in names:
            return
        if kind == "method":
            from idap.engine.methods import METHODS

            if name in METHODS:  # a config's variant
                return
            names = sorted({*names, *(m.name for m in METHODS.values())})
        valid = ", ".join(sorted(names))
        prefixes = index["model_prefixes"] if kind == "model" else ()
        more = "".join(f", or {p}:<name>" for p in prefixes)
        raise UnknownNameError(f"unknown {kind} {name!r}; valid: {valid}{more}")

    return check
