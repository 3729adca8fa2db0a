"""Micro-batcher: close a batch by item count, padded-token budget or age of its oldest item.

Adaptive (`due(idle=True)`): when the batch thread has nothing to do, waiting for more items only
adds latency, so whatever is queued goes at once; while it is busy, items accumulate up to the
limits or `max_wait_s`. Batch size thus follows the load: small when idle, full when saturated.

Pure and clock-injected (`now`), so tests advance a fake clock instead of sleeping. Items arrive
with their real token counts (tokenized before batching); a batch costs `padded_tokens`, the one
definition of the token budget on the worker's side.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def padded_tokens(longest: int, items: int) -> int:
    """What one inference call over `items` texts costs: every row is padded to the longest."""
    return longest * items


class Batcher(Generic[T]):
    def __init__(
        self, max_items: int, max_tokens: int, max_wait_s: float, now: Callable[[], float] = time.monotonic
    ) -> None:
        if max_items < 1 or max_tokens < 1 or max_wait_s < 0:
            raise ValueError("max_items and max_tokens must be >= 1, max_wait_s >= 0")
        self.max_items, self.max_tokens, self.max_wait_s, self.now = max_items, max_tokens, max_wait_s, now
        self._items: deque[tuple[T, int, float]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, tokens: int) -> None:
        self._items.append((item, tokens, self.now()))

    def _fits(self) -> tuple[int, int]:
        """How many of the oldest items one batch takes (at least one), and their longest."""
        n, longest = 0, 0
        for _, tokens, _ in self._items:
            longest_with = max(longest, tokens)
            if n and (n + 1 > self.max_items or padded_tokens(longest_with, n + 1) > self.max_tokens):
                break
            n, longest = n + 1, longest_with
        return n, longest

    @property
    def full(self) -> bool:
        """The next batch is at a limit: more items would not fit in it."""
        n, longest = self._fits()
        return n > 0 and (n < len(self._items) or n >= self.max_items or padded_tokens(longest, n) >= self.max_tokens)

    def time_left(self) -> float | None:
        """Seconds until the oldest item's deadline (0 when due); None when empty."""
        if not self._items:
            return None
        return max(0.0, self._items[0][2] + self.max_wait_s - self.now())

    def due(self, idle: bool = False) -> bool:
        """A batch should be taken now: it is full, its oldest item is `max_wait_s` old, or the
        consumer of batches is `idle`."""
        return bool(self._items) and (idle or self.full or self.time_left() == 0.0)

    def take(self) -> list[T]:
        """The oldest items up to the limits (always at least one); the rest stay queued."""
        return [self._items.popleft()[0] for _ in range(self._fits()[0])]

    def take_all(self) -> list[T]:
        out = [item for item, _, _ in self._items]
        self._items.clear()
        return out

    def drop(self, unwanted: Callable[[T], bool]) -> int:
        """Remove queued items (e.g. of revoked partitions); returns how many."""
        kept = deque(entry for entry in self._items if not unwanted(entry[0]))
        dropped = len(self._items) - len(kept)
        self._items = kept
        return dropped
