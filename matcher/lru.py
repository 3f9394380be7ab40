"""A bounded cache of the most recently used entries, shared by request threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any


class Lru:
    """Entries by key, the ``bound()`` most recently used kept (0: none). The lock is held only to read and update
    the entries, never while a caller computes a missing one, so other threads go on meanwhile."""

    def __init__(self, bound: Callable[[], int]):
        self.bound = bound
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Iterable[Hashable]) -> dict:
        """The entries held for these keys (the others are missing), now the most recently used."""
        with self._lock:
            found = {k: self._items[k] for k in dict.fromkeys(keys) if k in self._items}
            for k in found:
                self._items.move_to_end(k)
        return found

    def put_many(self, entries: Iterable[tuple[Hashable, Any]]) -> None:
        """Hold these (key, entry) pairs, the last the most recently used, dropping the least recently used beyond
        the bound."""
        bound = self.bound()
        with self._lock:
            for k, value in entries if bound else ():
                self._items[k] = value
                self._items.move_to_end(k)
            while len(self._items) > bound:
                self._items.popitem(last=False)

    def discard(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            for k in keys:
                self._items.pop(k, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
