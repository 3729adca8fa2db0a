"""Feedback records (`products.tag-feedback`), their own path through the loop: decode (pure), then
on the feedback thread write each valid decision into the Redis overrides (`worker/overrides.py`)
and dead-letter the bad ones; the loop commits their offsets only after that.

Bad feedback is data: malformed bytes, a record that is not a `TagFeedback`, a tag that is not
`facet:value` (`bad_tag`), a product this system never tagged (`unknown_product`): dead-lettered with
the reason and committed. Redis being unavailable is a fault: the batch is retried with backoff and
its offsets stay uncommitted until the overrides are written (or shutdown gives up on it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from schemas.events import TagFeedback
from worker.clock import Abort
from worker.decode import Invalid, validated
from worker.metrics import Metrics
from worker.outputs import OutMessage, dead_letter
from worker.overrides import OverrideStore, OverridesUnavailable
from worker.publish import PublishAborted
from worker.records import Rejected
from worker.settings import KafkaSettings, LimitSettings
from worker.transport import ConsumedRecord

log = logging.getLogger(__name__)
T = TypeVar("T")


def decode_feedback(raw: bytes | None, limits: LimitSettings) -> TagFeedback | Invalid:
    """Every failure is a reason, never an exception."""
    try:
        fb = validated(raw, limits, TagFeedback)
        if isinstance(fb, Invalid):
            return fb
    except Exception as exc:  # a record must never crash the loop: bad input is data
        return Invalid("schema", f"undecodable: {type(exc).__name__}: {str(exc)[:500]}")
    facet, sep, value = fb.tag.partition(":")
    if not sep or not facet.strip() or not value.strip():
        return Invalid("bad_tag", f"tag {fb.tag[:200]!r} is not 'facet:value'")
    if fb.at.tzinfo is None:  # naive timestamps are UTC by contract
        fb = fb.model_copy(update={"at": fb.at.replace(tzinfo=UTC)})
    return fb


@dataclass(frozen=True)
class FeedbackResult:
    applied: int
    dead: int


class ApplyFeedback:
    """One batch of feedback records: known products' decisions written to Redis (retried with
    backoff while Redis is unavailable), the rest dead-lettered and published (until acknowledged)."""

    def __init__(
        self,
        store: OverrideStore,
        publish: Callable[[list[OutMessage]], None],
        kafka: KafkaSettings,
        limits: LimitSettings,
        metrics: Metrics,
        abort: Abort,
        stop: threading.Event,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.publish, self.limits, self.metrics = store, publish, limits, metrics
        self.dlq_topic, self.backoff_max_s = kafka.dlq_topic, kafka.retry_backoff_max_s
        self.abort, self.stop, self.wall_clock = abort, stop, wall_clock

    def __call__(self, records: Sequence[ConsumedRecord]) -> FeedbackResult:
        rejected: list[Rejected] = []
        valid: list[tuple[ConsumedRecord, TagFeedback]] = []
        for r in records:
            fb = decode_feedback(r.value, self.limits)
            if isinstance(fb, Invalid):
                rejected.append(Rejected(r, 0.0, fb))
            else:
                valid.append((r, fb))
        with self.metrics.timed("feedback"):
            known = self._retry(lambda: self.store.known(list({fb.product_id for _, fb in valid})))
            for r, fb in valid:
                if fb.product_id not in known:
                    msg = f"product {fb.product_id[:200]!r} was never tagged by this system"
                    rejected.append(Rejected(r, 0.0, Invalid("unknown_product", msg)))
            apply = [fb for _, fb in valid if fb.product_id in known]
            self._retry(lambda: self.store.put(apply))
        for fb in apply:
            log.info("override %s %s on %s by %s", fb.action, fb.tag, fb.product_id, fb.reviewer)
        self.metrics.feedback.labels("applied").inc(len(apply))
        for rej in rejected:
            self.metrics.feedback.labels(rej.invalid.reason).inc()
        if rejected:
            stamp = self.wall_clock()
            self.publish(
                [
                    dead_letter(
                        rej,
                        stamp,
                        self.dlq_topic,
                        self.limits.max_dead_letter_value_bytes,
                        self.limits.max_dead_letter_key_bytes,
                    )
                    for rej in sorted(rejected, key=lambda x: (x.source.partition, x.source.offset))
                ]
            )
        return FeedbackResult(len(apply), len(rejected))

    def _retry(self, attempt: Callable[[], T]) -> T:
        backoff = 0.2
        while True:
            try:
                return attempt()
            except OverridesUnavailable as exc:
                self.metrics.feedback_retries.inc()
                log.warning("feedback overrides not written (%s); retrying in %.1f s", exc, backoff)
            # On shutdown, give up at once: the records stay uncommitted and are read again.
            if self.stop.is_set() or self.abort.wait(backoff) or self.stop.is_set():
                raise PublishAborted("feedback overrides not written at shutdown")
            backoff = min(backoff * 2, self.backoff_max_s)
