"""Micro-batcher: close a batch by item count, token budget or age of its oldest item.

Pure and clock-injected (`now`), so tests advance a fake clock instead of sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self, max_items: int, max_tokens: int, max_wait_s: float, now: Callable[[], float] = time.monotonic
    ) -> None:
        if max_items < 1 or max_tokens < 1 or max_wait_s < 0:
            raise ValueError("max_items and max_tokens must be >= 1, max_wait_s >= 0")
        self.max_items, self.max_tokens, self.max_wait_s, self.now = max_items, max_tokens, max_wait_s, now
        self._items: deque[tuple[T, int, float]] = deque()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, tokens: int) -> None:
        self._items.append((item, tokens, self.now()))
        self._tokens += tokens

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_items or self._tokens >= self.max_tokens

    def time_left(self) -> float | None:
        """Seconds until the oldest item's deadline (0 when due); None when empty."""
        if not self._items:
            return None
        return max(0.0, self._items[0][2] + self.max_wait_s - self.now())

    def due(self) -> bool:
        return bool(self._items) and (self.full or self.time_left() == 0.0)

    def take(self) -> list[T]:
        """The oldest items up to the limits (always at least one); the rest stay queued."""
        out: list[T] = []
        tokens = 0
        while self._items and len(out) < self.max_items:
            item, n, _ = self._items[0]
            if out and tokens + n > self.max_tokens:
                break
            self._items.popleft()
            out.append(item)
            tokens += n
        self._tokens -= tokens
        return out

    def take_all(self) -> list[T]:
        out = [item for item, _, _ in self._items]
        self._items.clear()
        self._tokens = 0
        return out
