"""The cache-hit path's shortcuts give exactly what the straightforward code gave."""

import uuid
from types import SimpleNamespace

import orjson

from bench.hot_path import replay
from schemas.events import ProductEvent, TagEvent
from worker.decode import EVENT_NAMESPACE, content_hash, event_id
from worker.engine import Tag
from worker.outputs import BuildMessages, tag_event
from worker.records import Parsed
from worker.settings import KafkaSettings
from worker.tagging import Tagged, TagResult
from worker.transport import ConsumedRecord

IDS = ["p1", 'quote"back\\slash', "ünïcødé-商品-🙂", "tab\tnewline\n", "\x00ctl", "x" * 200]


def test_event_id_is_uuid5() -> None:
    for pid in IDS:
        for version in ("v1", "d93854e487822338-int8"):
            h = content_hash(pid)
            assert event_id(pid, h, version) == str(uuid.uuid5(EVENT_NAMESPACE, f"{pid}\x00{h}\x00{version}"))


def _tagged(pid: str, tags: list[Tag], cached: bool, offset: int) -> Tagged:
    src = ConsumedRecord("in-ß", 3, offset, pid.encode(), b"{}", 1)
    text = f"title of {pid}"
    return Tagged(
        Parsed(src, 0.0, ProductEvent(product_id=pid, title=text), text, content_hash(text)), TagResult(tags), cached
    )


def _by_dict(t: Tagged, model_version: str, tagged_at: str) -> bytes:
    """The tag event as the worker built it before the template (a dict through orjson)."""
    r = t.record
    return orjson.dumps(
        {
            "event_id": event_id(r.product.product_id, r.chash, model_version),
            "product_id": r.product.product_id,
            "tags": [{"tag": x.tag, "score": float(min(1.0, max(0.0, x.score)))} for x in t.tags],
            "model_version": model_version,
            "taxonomy_version": "tax-1",
            "content_hash": r.chash,
            "tagged_at": tagged_at,
            "cached": t.cached,
            "source_topic": r.source.topic,
            "source_partition": r.source.partition,
            "source_offset": r.source.offset,
        }
    )


def test_tag_event_bytes_equal_the_dict_serialisation() -> None:
    shared = [Tag("brand:Nike", 0.9), Tag('category:"Q" > ü', 1.0000001), Tag("colour:red", -0.0)]
    outcomes = [_tagged(pid, shared if i % 2 else [], bool(i % 3), 10**12 + i) for i, pid in enumerate(IDS)]
    kafka = KafkaSettings(output_topic="out", dlq_topic="dlq")
    built = BuildMessages(kafka, SimpleNamespace(model_version="v-1", taxonomy_version="tax-1"))(
        list(outcomes), 1_750_000_000.25
    )
    tagged_at = "2025-06-15T15:06:40.250000Z"
    for o, m in zip(outcomes, built, strict=True):
        assert m.value == _by_dict(o, "v-1", tagged_at)
        assert m.key == o.record.product.product_id.encode()
        TagEvent.model_validate_json(m.value)  # and the contract accepts it
    assert tag_event(outcomes[1], "v-1", tagged_at, "out", "tax-1").value == built[1].value


def test_hit_replay_never_reaches_the_model() -> None:
    assert min(replay(300, partitions=2)) > 0  # raises if a hit was inferred or an event went missing
