"""Step 3, building what is published: tag-event bytes and dead-letter bytes (the contracts in
`schemas/events.py`; a test validates these bytes against them)."""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson

from schemas.events import DeadLetter, DeadLetterReason
from worker.decode import event_id
from worker.records import Rejected, where
from worker.settings import KafkaSettings, LimitSettings
from worker.tagging import Tagged
from worker.transport import ConsumedRecord

log = logging.getLogger(__name__)
DEFAULT_LIMITS = LimitSettings()


@dataclass(frozen=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes
    source: ConsumedRecord
    tagged: bool  # a tag event (False: a dead letter)
    minimal: bool = False  # a dead letter without any original bytes (nothing left to cut)


def tag_event(t: Tagged, model_version: str, tagged_at: str, topic: str) -> OutMessage:
    r, product = t.record, t.record.product
    # Serialised directly: building pydantic models per event was ~10% of the cache-hit path.
    ev = {
        "event_id": event_id(product.product_id, r.chash, model_version),
        "product_id": product.product_id,
        "tags": [{"tag": x.tag, "score": float(min(1.0, max(0.0, x.score)))} for x in t.tags],
        "model_version": model_version,
        "content_hash": r.chash,
        "tagged_at": tagged_at,
        "cached": t.cached,
        "source_topic": r.source.topic,
        "source_partition": r.source.partition,
        "source_offset": r.source.offset,
    }
    return OutMessage(topic, product.product_id.encode(), orjson.dumps(ev), r.source, tagged=True)


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def dead_letter(
    rej: Rejected,
    stamp: datetime,
    topic: str,
    max_value_bytes: int = DEFAULT_LIMITS.max_dead_letter_value_bytes,
    max_key_bytes: int = DEFAULT_LIMITS.max_dead_letter_key_bytes,
) -> OutMessage:
    log.info("dead-lettering %s: %s: %s", where(rej.source), rej.invalid.reason, rej.invalid.message[:200])
    return capped_dead_letter(
        rej.source, rej.invalid.reason, rej.invalid.message, stamp, topic, max_value_bytes, max_key_bytes
    )


def capped_dead_letter(
    src: ConsumedRecord,
    reason: DeadLetterReason,
    message: str,
    stamp: datetime,
    topic: str,
    max_value_bytes: int,
    max_key_bytes: int,
) -> OutMessage:
    """A dead letter that always fits a Kafka message: the original value and key are carried whole
    up to their caps, else as a prefix with the original size (and the value's sha256)."""
    raw, key = src.value or b"", src.key
    dl = DeadLetter(
        error_kind=reason,
        error_message=message[:2000],
        topic=src.topic,
        partition=src.partition,
        offset=src.offset,
        timestamp_ms=src.timestamp_ms,
        key_b64=_b64(None if key is None else key[:max_key_bytes]),
        value_b64=base64.b64encode(raw[:max_value_bytes]).decode(),
        value_size=len(raw),
        dead_lettered_at=stamp,
        truncated=len(raw) > max_value_bytes,
        value_sha256=hashlib.sha256(raw).hexdigest(),
        key_size=None if key is None else len(key),
        key_truncated=key is not None and len(key) > max_key_bytes,
    )
    # An oversized key is not reused as the record key (it alone could exceed the broker's limit).
    record_key = key if key is not None and len(key) <= max_key_bytes else None
    return OutMessage(topic, record_key, dl.model_dump_json().encode(), src, tagged=False)


def refused_dead_letter(m: OutMessage, error: str, topic: str, stamp: datetime) -> OutMessage:
    """What replaces a message Kafka refused as too large: a dead letter with no original bytes at
    all (size and sha256 only), so it cannot be refused for its size again."""
    what = "tag event" if m.tagged else "dead letter"
    dl = capped_dead_letter(
        m.source, "too_large", f"{what} of {len(m.value)} bytes refused by Kafka: {error}", stamp, topic, 0, 0
    )
    return replace(dl, minimal=True)


class BuildMessages:
    def __init__(self, kafka: KafkaSettings, model_version: str, limits: LimitSettings = DEFAULT_LIMITS) -> None:
        self.output_topic, self.dlq_topic, self.model_version = kafka.output_topic, kafka.dlq_topic, model_version
        self.max_value_bytes = limits.max_dead_letter_value_bytes
        self.max_key_bytes = limits.max_dead_letter_key_bytes

    def __call__(self, outcomes: list[Tagged | Rejected], wall_time: float) -> list[OutMessage]:
        stamp = datetime.fromtimestamp(wall_time, UTC)
        tagged_at = stamp.isoformat().replace("+00:00", "Z")
        return [
            tag_event(o, self.model_version, tagged_at, self.output_topic)
            if isinstance(o, Tagged)
            else dead_letter(o, stamp, self.dlq_topic, self.max_value_bytes, self.max_key_bytes)
            for o in outcomes
        ]
