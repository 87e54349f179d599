"""A least-recently-used cache sized in bytes (decoded HDF5 chunks, Parquet row groups).

Values are numpy arrays (or anything with ``nbytes``); a value larger than the whole cache
is returned but not kept, so memory stays bounded by ``max_bytes`` plus one piece.
"""

from __future__ import annotations

from collections import OrderedDict


class ByteLRU:
    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key, load):
        """The value for ``key``, from ``load()`` on a miss."""
        try:
            self._items.move_to_end(key)
            return self._items[key]
        except KeyError:
            pass
        value = load()
        size = int(getattr(value, "nbytes", 0))
        if size <= self.max_bytes:
            self._items[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.nbytes -= int(getattr(old, "nbytes", 0))
        return value

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)
