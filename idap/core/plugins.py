"""Plugins: your own models, datasets or methods, registered from modules outside the package.

A plugin is an ordinary Python module that calls the registries at import time
(``register_model(ModelSpec(...))``, ``@DATASETS.register("name")``). It is named in the
config's ``plugins`` list, either as an importable module (``mylab.idap_models``) or as a
path to a ``.py`` file (relative to the working directory), or installed as a package entry
point in the ``idap.plugins`` group. Every door loads them the same way, through
:func:`idap.core.config.validate_config`, so the workflow's planner, each of its jobs, the
CLI and ``idap.compress`` all see the same names.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from idap.core.codehash import files_digest

ENTRY_POINT_GROUP = "idap.plugins"
_loaded: dict[str, object] = {}


class PluginError(ImportError):
    """A named plugin could not be imported; the message is one line."""


def _is_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name


def _module_name(path: Path) -> str:
    """A stable, collision-free module name for a plugin file."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return f"idap_plugin_{path.stem}_{digest}"


def load_plugin(name: str) -> object:
    """Import one plugin (a module name or a ``.py`` path) once per process."""
    key = str(Path(name).resolve()) if _is_path(name) else name
    if key in _loaded:
        return _loaded[key]
    try:
        if _is_path(name):
            path = Path(key)
            if not path.is_file():
                raise PluginError(f"plugin file {name} not found (from {Path.cwd()})")
            spec = importlib.util.spec_from_file_location(_module_name(path), path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(spec.name, None)
                raise
        else:
            module = importlib.import_module(name)
    except PluginError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise PluginError(f"plugin {name!r} failed to import ({type(e).__name__}: {first})") from e
    _loaded[key] = module
    return module


def load_plugins(names=()) -> None:
    """Import the installed ``idap.plugins`` entry points, then each named plugin."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in _loaded:
            try:
                _loaded[ep.value] = ep.load()
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0]
                raise PluginError(
                    f"plugin entry point {ep.name!r} ({ep.value}) failed to import "
                    f"({type(e).__name__}: {first})"
                ) from e
    for name in names:
        load_plugin(name)


def plugin_files(names=()) -> list[Path]:
    """The source files of the named plugins (for the workflow's code hashes), without
    importing them."""
    files = []
    for name in names:
        if _is_path(name):
            files.append(Path(name).resolve())
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            files.append(Path(spec.origin))
    return files


def loaded_digest() -> str:
    """sha256 of the source files of every plugin this process imported (a checkpoint made
    before a plugin was edited is not resumed by its code's rerun); "" when none was."""
    files = sorted(
        {Path(f).resolve() for m in _loaded.values() if (f := getattr(m, "__file__", None))}
    )
    return files_digest((str(p), p) for p in files) if files else ""
