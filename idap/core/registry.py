"""Name -> builder registries (models, datasets, methods), in the style of timm's create_model."""

from __future__ import annotations

from collections.abc import Callable
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

    def get(self, name: str) -> Any:
        if name in self._entries:
            return self._entries[name]
        if name in self._resolved:
            return self._resolved[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            self._resolved[name] = self._prefixes[prefix](rest)  # raises UnknownNameError
            return self._resolved[name]
        valid = ", ".join(sorted(self._entries))
        more = "".join(f", or {p}:<name>" for p in sorted(self._prefixes))
        raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {valid}{more}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
