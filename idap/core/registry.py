"""Name -> builder registries (models, datasets, criteria, methods, mask rules), in the style
of timm's create_model. One class for every concept, so a plugin adds to any of them the same
way (``@REGISTRY.register("name")`` or ``REGISTRY.add(name, obj)``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry:
    """A named collection of builders.

    Args:
        kind: what the entries are ("model", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._prefixes: dict[str, Callable[[str], Any]] = {}
        self._resolved: dict[str, Any] = {}
        self._layers: dict[str, dict[str, Any]] = {}

    def register_prefix(self, prefix: str, resolve: Callable[[str], Any]) -> None:
        """Names ``<prefix>:<rest>`` resolve on first use to ``resolve(rest)`` (e.g. any timm
        model as ``timm:<name>``); the entry is then cached like a registered one."""
        self._prefixes[prefix] = resolve

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``)."""

        def deco(obj):
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            if meta:
                for k, v in meta.items():
                    setattr(obj, k, v)
            self._entries[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: Any) -> Any:
        """Register ``obj`` under ``name`` (the decorator's non-decorating form)."""
        return self.register(name)(obj)

    def set_layer(self, layer: str, entries: dict[str, Any]) -> dict[str, Any]:
        """Replace the scoped entries named ``layer`` (e.g. a config's method variants): they
        resolve like registered ones but never enter the registered table, and the next
        call for the same layer replaces them all. Returns the entries it replaced.

        Raises:
            ValueError: an entry named like a registered one.
        """
        clash = sorted(set(entries) & set(self._entries))
        if clash:
            raise ValueError(f"{layer}.{clash[0]}: the name of a registered {self.kind}")
        old = self._layers.pop(layer, {})
        if entries:
            self._layers[layer] = dict(entries)
        return old

    @contextlib.contextmanager
    def scoped(self, layer: str, entries: dict[str, Any]) -> Iterator[None]:
        """:meth:`set_layer` for the duration of a ``with`` block."""
        old = self.set_layer(layer, entries)
        try:
            yield
        finally:
            self.set_layer(layer, old)

    def layer(self, layer: str) -> dict[str, Any]:
        return dict(self._layers.get(layer, {}))

    def get(self, name: str) -> Any:
        if name in self._entries:
            return self._entries[name]
        for entries in self._layers.values():
            if name in entries:
                return entries[name]
        if name in self._resolved:
            return self._resolved[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            self._resolved[name] = self._prefixes[prefix](rest)  # raises UnknownNameError
            return self._resolved[name]
        valid = ", ".join(sorted(self._entries))
        more = "".join(f", or {p}:<name>" for p in sorted(self._prefixes))
        raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}{more}")

    def find(self, name: str) -> Any | None:
        """The entry ``name`` (registered or scoped), or None."""
        try:
            return self.get(name)
        except KeyError:
            return None

    def names(self) -> list[str]:
        """The registered names (scoped layers not included)."""
        return sorted(self._entries)

    def values(self) -> list[Any]:
        """Registered entries, then scoped ones."""
        return [*self._entries.values(), *(v for e in self._layers.values() for v in e.values())]

    def __iter__(self) -> Iterator[str]:
        """The registered names, sorted."""
        return iter(self.names())

    def __contains__(self, name: str) -> bool:
        return name in self._entries or any(name in e for e in self._layers.values())
