"""A small name -> entry registry, used where extension is the point (basenets, decoders, datasets).

A name no entry has triggers one load of the installed plugins (`seglab.plugins`) before it is refused,
so a decoder from an installed plugin package is found by `build_model` as by the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from seglab import plugins
from seglab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to entries; `register` is usable as a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Return a decorator that registers its argument under `name` and `aliases`."""

        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        """Return the registered name for `name` or one of its aliases."""
        return self._aliases.get(name, name)

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) in self._entries

    def __getitem__(self, name: str) -> T:
        if name not in self and plugins.load_entry_points():
            return self[name]
        key = self.canonical(name)
        if key not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())} "
                "(or register your own in a plugin module: see `--plugins`)"
            )
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        """Return the registered names (aliases excluded), in registration order."""
        return list(self._entries)

    def aliases(self, name: str) -> list[str]:
        """Return the aliases of a registered name."""
        return [alias for alias, target in self._aliases.items() if target == name]
