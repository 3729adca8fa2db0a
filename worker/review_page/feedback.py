"""A reviewer's decision: the request is checked and turned into a `TagFeedback`, which is published
keyed by product id and acknowledged by the broker before the page is told it was saved."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime

from pydantic import ValidationError

from schemas.events import TagFeedback
from worker.clock import Clock
from worker.review_page.store import ReviewStore
from worker.transport import Delivery, Publisher, TransportError

log = logging.getLogger(__name__)
FLUSH_SLICE_S = 0.25
MAX_REVIEWER_CHARS = 128


class FeedbackError(Exception):
    """The request was refused (`status` 4xx) or the decision could not be published (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def normalise_tag(raw: object) -> str:
    """`facet:value` with the blanks around either part removed; FeedbackError when not that shape."""
    if not isinstance(raw, str) or ":" not in raw:
        raise FeedbackError(400, "a tag is written facet:value, e.g. brand:Acme")
    facet, value = (part.strip() for part in raw.split(":", 1))
    if not facet or not value:
        raise FeedbackError(400, "a tag is written facet:value, e.g. brand:Acme (both parts non-empty)")
    return f"{facet}:{value}"


def parse_request(
    body: Mapping[str, object], store: ReviewStore, at: datetime, new_id: Callable[[], str]
) -> TagFeedback:
    """The page's JSON request -> a valid TagFeedback about a product in the review queue."""
    product_id = body.get("product_id")
    if not isinstance(product_id, str) or store.get(product_id) is None:
        raise FeedbackError(404, "unknown product: not in the review queue")
    action = body.get("action")
    if action not in ("accept", "reject", "add"):
        raise FeedbackError(400, "action must be accept, reject or add")
    reviewer = body.get("reviewer")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise FeedbackError(400, "a reviewer name is required")
    if len(reviewer.strip()) > MAX_REVIEWER_CHARS:
        raise FeedbackError(400, f"reviewer name longer than {MAX_REVIEWER_CHARS} characters")
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise FeedbackError(400, "note must be text")
    try:
        return TagFeedback(
            product_id=product_id,
            action=action,
            tag=normalise_tag(body.get("tag")),
            reviewer=reviewer.strip(),
            at=at,
            feedback_id=new_id(),
            note=note or None,
        )
    except ValidationError as exc:
        raise FeedbackError(
            400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None


class FeedbackPublisher:
    """Publishes one decision at a time and waits for its acknowledgement, retrying (a new client,
    backoff) until `timeout_s`; then FeedbackError(503). A retry after an unknown outcome can publish
    the decision twice: both copies carry the same `feedback_id`, and applying one twice is harmless."""

    def __init__(self, publisher: Publisher, topic: str, timeout_s: float, clock: Clock) -> None:
        self.publisher, self.topic, self.timeout_s, self.clock = publisher, topic, timeout_s, clock
        self._lock = threading.Lock()  # requests run on a thread pool; one send/flush at a time
        self._never = threading.Event()

    def publish(self, feedback: TagFeedback) -> None:
        value = feedback.model_dump_json().encode()
        key = feedback.product_id.encode()
        with self._lock:
            deadline, backoff, error = self.clock.now() + self.timeout_s, 0.2, "not acknowledged in time"
            while True:
                error = self._attempt(key, value, deadline) or ""
                if not error:
                    return
                left = deadline - self.clock.now()
                if left <= 0:
                    break
                log.warning("feedback %s not acknowledged (%s); retrying", feedback.feedback_id, error)
                self.publisher.reset()
                self.clock.wait(self._never, min(backoff, left))
                backoff = min(backoff * 2, 2.0)
        raise FeedbackError(503, f"not saved: the broker did not acknowledge it within {self.timeout_s:g} s ({error})")

    def _attempt(self, key: bytes, value: bytes, deadline: float) -> str | None:
        """None when acknowledged, else what went wrong."""
        try:
            delivery: Delivery = self.publisher.send(self.topic, key, value)
        except TransportError as exc:
            return str(exc)
        while not delivery.is_done and self.clock.now() < deadline:
            self.publisher.flush(min(FLUSH_SLICE_S, max(0.0, deadline - self.clock.now())))
        if delivery.is_done and delivery.succeeded():
            return None
        failure = delivery.exception
        if delivery.is_done and failure is not None:
            return f"{type(failure).__name__}: {failure}"
        return "not acknowledged in time"
