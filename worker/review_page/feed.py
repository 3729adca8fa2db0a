"""The page's reader: one thread polls the review topic and the feedback topic into the store.

It never commits: the page's view lives in memory, so every start replays both topics from the
beginning (bounded by the store's size) and finds the queue and the decisions already made. Records
that do not parse are logged and skipped: the page only displays, the worker dead-letters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.events import ReviewItem, TagFeedback
from worker.clock import Clock
from worker.review_page.store import ReviewStore
from worker.transport import ConsumedRecord, Consumer, TopicPartition, TransportError

log = logging.getLogger(__name__)


class _NothingToCommit:
    """Rebalance events change nothing here: records already read stay in the view."""

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        log.info("reading %s", ", ".join(map(str, sorted(partitions))) or "nothing")

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        pass

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        pass


@dataclass
class FeedStatus:
    connected: bool = False
    items: int = 0
    decisions: int = 0
    skipped: int = 0


class ReviewFeed:
    def __init__(
        self,
        connect: Callable[[], Consumer],
        review_topic: str,
        feedback_topic: str,
        store: ReviewStore,
        stop: threading.Event,
        clock: Clock,
        poll_timeout_s: float = 0.5,
        max_records: int = 500,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.connect, self.store, self.stop, self.clock = connect, store, stop, clock
        self.review_topic, self.feedback_topic = review_topic, feedback_topic
        self.poll_timeout_s, self.max_records, self.backoff_max_s = poll_timeout_s, max_records, backoff_max_s
        self.status = FeedStatus()

    def handle(self, records: list[ConsumedRecord]) -> None:
        for r in records:
            try:
                if r.topic == self.review_topic:
                    self.store.put(ReviewItem.model_validate_json(r.value or b""))
                    self.status.items += 1
                elif r.topic == self.feedback_topic:
                    self.store.decide(TagFeedback.model_validate_json(r.value or b""))
                    self.status.decisions += 1
            except ValidationError as exc:
                self.status.skipped += 1
                log.warning(
                    "%s[%d]@%d: skipped, not a valid record: %s", r.topic, r.partition, r.offset, exc.errors()[0]
                )

    def run(self) -> None:
        """Until `stop`: connect (retried with backoff), subscribe, poll into the store."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                consumer = self.connect()
            except TransportError as exc:
                log.warning("review feed: cannot connect (%s); retrying in %.1f s", exc, backoff)
                self.clock.wait(self.stop, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            try:
                self._poll(consumer)
            finally:
                self.status.connected = False
                try:
                    consumer.close(2.0)
                except TransportError as exc:
                    log.info("review feed: close: %s", exc)
            return

    def _poll(self, consumer: Consumer) -> None:
        consumer.subscribe([self.review_topic, self.feedback_topic], _NothingToCommit())
        backoff = 0.5
        while not self.stop.is_set():
            try:
                records = consumer.poll(self.poll_timeout_s, self.max_records)
            except TransportError as exc:
                self.status.connected = False
                log.warning("review feed: poll failed (%s); retrying in %.1f s", exc, backoff)
                self.clock.wait(self.stop, backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            backoff = 0.5
            self.status.connected = consumer.connected()
            self.handle(records)
