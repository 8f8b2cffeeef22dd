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

import dataclasses
import os
from pathlib import Path

from idap.core.io import write_json
from idap.core.name_cache import cached_index, index_path
from idap.core.name_cache import use_index_methods as use_index_methods  # the planner's
from idap.core.plugins import load_plugins
from idap.core.registry import UnknownNameError


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


KEEP = 32  # cached indexes kept: every edit of the code makes a new one


def name_index(plugins=(), cache_dir: str | os.PathLike | None = None) -> dict:
    """The names of every registry (plugins included), from the cache when it is current.
    A cache that cannot be written (a read-only home) only costs the rebuild next time.
    Each use marks its entry; a new entry evicts all but the :data:`KEEP` last used."""
    index = cached_index(plugins, cache_dir)
    if index is not None:
        return index
    path = index_path(plugins, cache_dir)
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
