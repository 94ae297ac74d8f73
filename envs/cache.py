"""A size-bounded least-recently-used cache, for the env's per-example features and full-context scores."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch


class LRUCache:
    """A size-bounded least-recently-used cache; ``cost(value)`` gives each entry's size."""

    def __init__(self, capacity: float, cost: Callable[[Any], float] = lambda v: 1.0) -> None:
        self.capacity = capacity
        self.cost = cost
        self.used = 0.0
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any | None:
        """Value for ``key`` or None, marking it recently used."""
        if key in self.data:
            self.data.move_to_end(key)
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    def put(self, key: Any, value: Any) -> None:
        """Insert, evicting the least recently used entries beyond capacity."""
        if key in self.data:
            self.used -= self.cost(self.data.pop(key))
        self.data[key] = value
        self.used += self.cost(value)
        while self.used > self.capacity and len(self.data) > 1:
            _, old = self.data.popitem(last=False)
            self.used -= self.cost(old)


def tensor_bytes(v: Any) -> float:
    """Bytes of a tensor (or a tuple of them); a small constant for anything else."""
    if isinstance(v, torch.Tensor):
        return float(v.numel() * v.element_size())
    if isinstance(v, tuple):
        return sum(tensor_bytes(x) for x in v)
    return 64.0
