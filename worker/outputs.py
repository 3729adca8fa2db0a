"""Step 3, building what is published: tag-event bytes and dead-letter bytes (the contracts in
`schemas/events.py`; a test validates these bytes against them)."""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from schemas.events import DeadLetter, DeadLetterReason
from worker.decode import event_id
from worker.records import Rejected, where
from worker.settings import KafkaSettings, LimitSettings
from worker.tagging import Tagged, tag_dict
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


def tag_event(
    t: Tagged, model_version: str, tagged_at: str, topic: str, taxonomy_version: str | None = None
) -> OutMessage:
    """One tag event on its own (BuildMessages builds a batch's events without per-event dicts)."""
    return _TagEvents(model_version, tagged_at, topic, taxonomy_version)(t)


# The tag event's JSON (schemas/events.py TagEvent) with its fields in a fixed order, filled per event
# from pre-serialised parts: byte for byte what orjson.dumps gives for the same dict (a test checks),
# without building a dict and a tag list per event (~30% of the cache-hit path).
_TEMPLATE = (
    b'{"event_id":"%s","product_id":%s,"tags":%s,"model_version":%s,"taxonomy_version":%s,"content_hash":"%s",'
    b'"tagged_at":%s,"cached":%s,"source_topic":%s,"source_partition":%d,"source_offset":%d}'
)


class _TagEvents:
    """Tag events of one batch: the batch's constants serialised once; the tags of one result
    (a cache entry or an inference shared by identical texts) serialised once (`TagResult.json`)."""

    def __init__(self, model_version: str, tagged_at: str, topic: str, taxonomy_version: str | None = None) -> None:
        self.model_version, self.topic = model_version, topic
        self.version_json, self.tagged_at_json = orjson.dumps(model_version), orjson.dumps(tagged_at)
        self.taxonomy_json = orjson.dumps(taxonomy_version)
        self.topic_json: dict[str, bytes] = {}

    def __call__(self, t: Tagged) -> OutMessage:
        r, product = t.record, t.record.product
        src, pid = r.source, product.product_id
        source_topic = self.topic_json.get(src.topic)
        if source_topic is None:
            source_topic = self.topic_json[src.topic] = orjson.dumps(src.topic)
        value = _TEMPLATE % (
            event_id(pid, r.chash, self.model_version).encode(),
            orjson.dumps(pid),
            t.result.json(),  # once per result: identical texts share theirs
            self.version_json,
            self.taxonomy_json,
            r.chash.encode(),
            self.tagged_at_json,
            b"true" if t.cached else b"false",
            source_topic,
            src.partition,
            src.offset,
        )
        return OutMessage(self.topic, pid.encode(), value, src, tagged=True)


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


class ModelId(Protocol):
    @property
    def model_version(self) -> str: ...

    @property
    def taxonomy_version(self) -> str: ...


class BuildMessages:
    """Outcomes -> messages. `model` is the default; the loop passes the engine each batch ran with."""

    def __init__(self, kafka: KafkaSettings, model: ModelId, limits: LimitSettings = DEFAULT_LIMITS) -> None:
        self.output_topic, self.dlq_topic, self.model = kafka.output_topic, kafka.dlq_topic, model
        self.max_value_bytes = limits.max_dead_letter_value_bytes
        self.max_key_bytes = limits.max_dead_letter_key_bytes

    def __call__(
        self, outcomes: list[Tagged | Rejected], wall_time: float, model: ModelId | None = None
    ) -> list[OutMessage]:
        stamp = datetime.fromtimestamp(wall_time, UTC)
        tagged_at = stamp.isoformat().replace("+00:00", "Z")
        model = model or self.model
        tag_event = _TagEvents(model.model_version, tagged_at, self.output_topic, model.taxonomy_version)
        return [
            tag_event(o)
            if isinstance(o, Tagged)
            else dead_letter(o, stamp, self.dlq_topic, self.max_value_bytes, self.max_key_bytes)
            for o in outcomes
        ]


def review_item(t: Tagged, reasons: list[dict[str, Any]], model: ModelId, tagged_at: str, topic: str) -> OutMessage:
    """A `ReviewItem` (schemas/events.py): the tag event's fields, the text, the reasons, the near misses."""
    r, product, src = t.record, t.record.product, t.record.source
    pid = product.product_id
    value = orjson.dumps(
        {
            "event_id": event_id(pid, r.chash, model.model_version),
            "product_id": pid,
            "tags": orjson.Fragment(t.result.json()),
            "model_version": model.model_version,
            "taxonomy_version": model.taxonomy_version,
            "content_hash": r.chash,
            "tagged_at": tagged_at,
            "cached": t.cached,
            "source_topic": src.topic,
            "source_partition": src.partition,
            "source_offset": src.offset,
            "title": product.title,
            "description": product.description,
            "reasons": reasons,
            "candidates": [tag_dict(x) for x in t.candidates],
        }
    )
    return OutMessage(topic, pid.encode(), value, src, tagged=True)
