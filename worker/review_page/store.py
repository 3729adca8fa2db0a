"""The page's view of the review queue: the latest `ReviewItem` of each product and the latest
decision per (product, tag), both bounded (least recently updated products dropped first). Pure,
thread-safe (the feed thread writes, request handlers read)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TypeVar

from schemas.events import ReviewItem, TagFeedback

V = TypeVar("V")


class ReviewStore:
    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self._items: OrderedDict[str, ReviewItem] = OrderedDict()
        self._decisions: OrderedDict[str, dict[str, TagFeedback]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: ReviewItem) -> bool:
        """Keep `item` unless an item tagged later is already here (a replay). True if kept."""
        with self._lock:
            old = self._items.get(item.product_id)
            if old is not None and old.tagged_at > item.tagged_at:
                return False
            self._items[item.product_id] = item
            self._items.move_to_end(item.product_id)
            _trim(self._items, self.max_items)
            return True

    def decide(self, feedback: TagFeedback) -> None:
        """Record a decision (ours or another reviewer's, read back from the feedback topic); the
        latest per tag wins, an older one arriving later (a replay) is ignored."""
        with self._lock:
            per_tag = self._decisions.setdefault(feedback.product_id, {})
            old = per_tag.get(feedback.tag)
            if old is None or old.at <= feedback.at:
                per_tag[feedback.tag] = feedback
            self._decisions.move_to_end(feedback.product_id)
            _trim(self._decisions, self.max_items)

    def get(self, product_id: str) -> ReviewItem | None:
        with self._lock:
            return self._items.get(product_id)

    def items(self) -> list[ReviewItem]:
        """Most recently routed first."""
        with self._lock:
            return list(reversed(self._items.values()))

    def decisions(self, product_id: str) -> dict[str, TagFeedback]:
        with self._lock:
            return dict(self._decisions.get(product_id, {}))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _trim(d: OrderedDict[str, V], size: int) -> None:
    while len(d) > size:
        d.popitem(last=False)
