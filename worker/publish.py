"""Step 4, publishing: send a batch's messages and wait until every one is acknowledged, retrying
with backoff. Only `Abort` ends it early (shutdown): flushes run in short slices so an abort or the
drain deadline cuts even a stalled broker short."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from worker.clock import Abort, Clock
from worker.health import Health
from worker.metrics import Metrics
from worker.outputs import OutMessage, refused_dead_letter
from worker.records import where
from worker.settings import KafkaSettings
from worker.transport import Delivery, Publisher, TransportError, is_too_large

log = logging.getLogger(__name__)
FLUSH_SLICE_S = 0.25  # longest an abort waits for a flush to notice it


class PublishAborted(Exception):
    """Shutdown ran out of budget before a batch was acknowledged; its offsets stay uncommitted."""


class SendOrder:
    """Batches publish one at a time, in the order they were submitted, while the rest of their work
    (inference, evidence, building the events) runs concurrently on the batch threads: tag events of
    one product keep their order across batches, and one publisher serves one batch's retries at a
    time. Each batch takes a ticket when submitted; `turn(ticket)` waits for the batches before it
    to publish, and `release(ticket)` (always, also for a batch that failed before publishing)
    passes the turn on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued = 0
        self._turn = 0  # the next ticket allowed to publish
        self._released: set[int] = set()

    def ticket(self) -> int:
        with self._cond:
            self._issued += 1
            return self._issued - 1

    @contextmanager
    def turn(self, ticket: int, abort: Abort) -> Iterator[None]:
        with self._cond:
            while self._turn < ticket:
                if abort.expired():
                    raise PublishAborted("shutdown while waiting for earlier batches to publish")
                self._cond.wait(FLUSH_SLICE_S)
        try:
            yield
        finally:
            self.release(ticket)

    def release(self, ticket: int) -> None:
        with self._cond:
            if ticket < self._turn:
                return  # already passed on
            self._released.add(ticket)
            while self._turn in self._released:
                self._released.discard(self._turn)
                self._turn += 1
            self._cond.notify_all()


class Publish:
    def __init__(
        self, publisher: Publisher, kafka: KafkaSettings, metrics: Metrics, health: Health, abort: Abort, clock: Clock
    ) -> None:
        self.publisher, self.metrics, self.health, self.abort, self.clock = publisher, metrics, health, abort, clock
        self.timeout_s, self.backoff_max_s = kafka.produce_timeout_s, kafka.retry_backoff_max_s
        self.dlq_topic = kafka.dlq_topic

    def __call__(self, messages: list[OutMessage]) -> None:
        pending, backoff = messages, 0.2
        with self.metrics.timed("produce"):
            while pending:
                if self.abort.expired():
                    raise PublishAborted(f"{len(pending)} records unacknowledged at shutdown")
                failed, errors, refused = self._attempt(pending)
                if refused and not failed:
                    # Refused as too large is permanent for those records: their minimal dead
                    # letters go at once (no backoff: not a fault); never retried as they were.
                    pending = refused
                    continue
                failed += refused  # (with the others, after the backoff)
                if not failed:
                    self.health.published()
                    return
                self.health.publish_failed()
                self.metrics.produce_retries.inc()
                log.warning(
                    "%d of %d records not acknowledged (%s); retrying in %.1f s",
                    len(failed),
                    len(pending),
                    ", ".join(sorted(errors)),
                    backoff,
                )
                if self.abort.wait(backoff):
                    raise PublishAborted(f"{len(failed)} records unacknowledged at shutdown")
                backoff = min(backoff * 2, self.backoff_max_s)
                self.publisher.reset()
                pending = failed

    def _attempt(self, pending: list[OutMessage]) -> tuple[list[OutMessage], set[str], list[OutMessage]]:
        """Returns (failed: retry as they are, their errors, replacements of the refused as too large)."""
        try:
            sent: list[tuple[OutMessage, Delivery]] = [
                (m, self.publisher.send(m.topic, m.key, m.value)) for m in pending
            ]
        except TransportError as exc:
            return pending, {str(exc)}, []
        flush_until = self.clock.now() + self.timeout_s
        while not self.abort.expired():
            left = min(flush_until - self.clock.now(), self.abort.remaining())
            if left <= 0 or self.publisher.flush(min(FLUSH_SLICE_S, left)):
                break
        failed, refused, errors = [], [], set()
        for m, d in sent:
            if d.is_done and d.succeeded():
                continue
            if d.is_done and is_too_large(d.exception) and not m.minimal:
                refused.append(self._replace(m, d.exception))
                continue
            failed.append(m)
            if d.is_done and d.exception is not None:
                errors.add(type(d.exception).__name__)
        if failed and not errors:
            errors = {"not acknowledged in time"}
        return failed, errors, refused

    def _replace(self, m: OutMessage, exc: BaseException | None) -> OutMessage:
        log.error(
            "%s: %d-byte %s refused as too large (%s); dead-lettering the record without its bytes",
            where(m.source),
            len(m.value),
            "tag event" if m.tagged else "dead letter",
            exc,
        )
        return refused_dead_letter(m, f"{type(exc).__name__}: {exc}", self.dlq_topic, datetime.now(UTC))
