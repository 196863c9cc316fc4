"""One small generic registry, used for stages, models, exporters and targets."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError, shown

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; a miss suggests the nearest known names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under `name`."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Register `obj` under `name`; a name can be registered once."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Look up `name`, or raise `UnknownNameError` naming close matches and every known name."""
        try:
            return self._items[name]
        except KeyError:  # TypeError: an unhashable value where a name belongs
            raise UnknownNameError(self.miss_message(name)) from None

    def miss_message(self, name: str) -> str:
        """The text of a lookup miss: 'unknown stage 'prnue'; did you mean 'prune'? known: ...'."""
        plain = isinstance(name, str) and len(name) < 100
        close = difflib.get_close_matches(name, self._items, n=1, cutoff=0.6) if plain else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {shown(name)}{hint} known: {', '.join(sorted(self._items))}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
