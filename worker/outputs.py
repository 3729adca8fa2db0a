"""Step 3, building what is published: tag-event bytes and dead-letter bytes (the contracts in
`schemas/events.py`; a test validates these bytes against them)."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import orjson

from schemas.events import DeadLetter
from worker.decode import event_id
from worker.engine import Tag
from worker.records import Rejected, where
from worker.settings import KafkaSettings
from worker.tagging import Tagged
from worker.transport import ConsumedRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes
    source: ConsumedRecord
    tagged: bool  # a tag event (False: a dead letter)


def tag_event(
    t: Tagged, model_version: str, tagged_at: str, topic: str, taxonomy_version: str | None = None
) -> OutMessage:
    """One tag event on its own (BuildMessages builds a batch's events without per-event dicts)."""
    return _TagEvents(model_version, tagged_at, topic, taxonomy_version)(t)


def _tags_json(tags: list[Tag]) -> bytes:
    return orjson.dumps([{"tag": x.tag, "score": float(min(1.0, max(0.0, x.score)))} for x in tags])


# The tag event's JSON (schemas/events.py TagEvent) with its fields in a fixed order, filled per event
# from pre-serialised parts: byte for byte what orjson.dumps gives for the same dict (a test checks),
# without building a dict and a tag list per event (~30% of the cache-hit path).
_TEMPLATE = (
    b'{"event_id":"%s","product_id":%s,"tags":%s,"model_version":%s,"taxonomy_version":%s,"content_hash":"%s",'
    b'"tagged_at":%s,"cached":%s,"source_topic":%s,"source_partition":%d,"source_offset":%d}'
)


class _TagEvents:
    """Tag events of one batch: the batch's constants serialised once; the tags of one result
    (a cache entry or an inference shared by identical texts) serialised once."""

    def __init__(self, model_version: str, tagged_at: str, topic: str, taxonomy_version: str | None = None) -> None:
        self.model_version, self.topic = model_version, topic
        self.version_json, self.tagged_at_json = orjson.dumps(model_version), orjson.dumps(tagged_at)
        self.taxonomy_json = orjson.dumps(taxonomy_version)
        self.tags_json: dict[int, tuple[list[Tag], bytes]] = {}  # id(tags) -> (tags kept alive, JSON)
        self.topic_json: dict[str, bytes] = {}

    def __call__(self, t: Tagged) -> OutMessage:
        r, product = t.record, t.record.product
        src, pid = r.source, product.product_id
        entry = self.tags_json.get(id(t.tags))
        if entry is None:
            entry = self.tags_json[id(t.tags)] = (t.tags, _tags_json(t.tags))
        source_topic = self.topic_json.get(src.topic)
        if source_topic is None:
            source_topic = self.topic_json[src.topic] = orjson.dumps(src.topic)
        value = _TEMPLATE % (
            event_id(pid, r.chash, self.model_version).encode(),
            orjson.dumps(pid),
            entry[1],
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


def dead_letter(rej: Rejected, stamp: datetime, topic: str) -> OutMessage:
    src, raw = rej.source, rej.source.value or b""
    dl = DeadLetter(
        error_kind=rej.invalid.reason,
        error_message=rej.invalid.message[:2000],
        topic=src.topic,
        partition=src.partition,
        offset=src.offset,
        timestamp_ms=src.timestamp_ms,
        key_b64=base64.b64encode(src.key).decode() if src.key is not None else None,
        value_b64=base64.b64encode(raw).decode(),
        value_size=len(raw),
        dead_lettered_at=stamp,
    )
    log.info("dead-lettering %s: %s: %s", where(src), rej.invalid.reason, rej.invalid.message[:200])
    return OutMessage(topic, src.key, dl.model_dump_json().encode(), src, tagged=False)


class ModelId(Protocol):
    @property
    def model_version(self) -> str: ...

    @property
    def taxonomy_version(self) -> str: ...


class BuildMessages:
    """Outcomes -> messages. `model` is the default; the loop passes the engine each batch ran with."""

    def __init__(self, kafka: KafkaSettings, model: ModelId) -> None:
        self.output_topic, self.dlq_topic, self.model = kafka.output_topic, kafka.dlq_topic, model

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
            else dead_letter(o, stamp, self.dlq_topic)
            for o in outcomes
        ]
