"""The loop's pure steps on their own: offset tracker, tagging a batch, messages, decoding."""

from __future__ import annotations

import json

from schemas.events import DeadLetter, TagEvent
from worker.decode import cache_key
from worker.engine import Encoded, Outputs, Tag
from worker.evidence import EvidenceSpan
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.outputs import BuildMessages
from worker.records import DecodeRecords, Parsed, Rejected, Tokenize, Valid
from worker.settings import KafkaSettings, LimitSettings
from worker.tagging import CacheLookup, TagBatch, Tagged, TagResult, fields_print, tags_to_cache
from worker.testing import FakeCache, FakeEngine
from worker.transport import ConsumedRecord, TopicPartition

A, B = TopicPartition("in", 0), TopicPartition("in", 1)


def _consume(t: OffsetTracker, tp: TopicPartition, *offsets: int) -> list[tuple[TopicPartition, int]]:
    for o in offsets:
        t.seen(tp, o)
    return [(tp, o) for o in offsets]


def test_tracker_commits_in_consume_order_whatever_the_completion_order() -> None:
    t = OffsetTracker()
    first = t.open(_consume(t, A, 0, 1))
    second = t.open(_consume(t, A, 2, 3) + _consume(t, B, 0))
    third = t.open(_consume(t, B, 1))
    t.done(third)
    t.done(second)
    assert t.committable() == {B: 2}, "A committed past a batch still in flight"
    t.done(first)
    assert t.committable() == {A: 4, B: 2}
    t.committed({A: 4, B: 2})
    assert t.committable() == {} and t.last_committed(A) == 4


def test_tracker_never_commits_past_a_failed_batch() -> None:
    t = OffsetTracker()
    ok, bad, later = (t.open(_consume(t, A, o)) for o in (0, 1, 2))
    t.done(ok)
    t.failed(bad)
    t.done(later)
    assert t.committable() == {A: 1}
    assert t.blocked


def test_tracker_forget_returns_where_to_read_again() -> None:
    t = OffsetTracker()
    done = t.open(_consume(t, A, 0, 1, 2, 3, 4))
    in_flight = t.open(_consume(t, A, 5, 6) + _consume(t, B, 7))
    t.done(done)
    t.committed(t.committable())
    assert t.forget({A, B}) == {A: 5, B: 7}  # A's last commit; B never committed: its first record
    t.done(in_flight)
    assert t.committable() == {}, "a revoked partition's batch finished later and was committed"


def _record(offset: int, title: str, pid: str = "p") -> ConsumedRecord:
    value = json.dumps({"product_id": f"{pid}{offset}", "title": title}).encode()
    return ConsumedRecord("in", 0, offset, b"k", value, 1_700_000_000_000)


def _decode(engine: FakeEngine, *records: ConsumedRecord) -> list[Valid | Rejected]:
    decoded = DecodeRecords(LimitSettings(), Metrics())(list(records), 0.0)
    tokenized = iter(Tokenize(engine, Metrics())([d for d in decoded if isinstance(d, Parsed)]))
    return [next(tokenized) if isinstance(d, Parsed) else d for d in decoded]


def test_decoding_counts_real_tokens_once() -> None:
    engine = FakeEngine()
    valid, rejected = _decode(engine, _record(0, "one two three"), ConsumedRecord("in", 0, 1, None, b"{", None))
    assert isinstance(valid, Valid) and valid.tokens == 5  # the engine's own tokenizer: 3 words + 2
    assert isinstance(rejected, Rejected) and rejected.invalid.reason == "not_json"


def test_a_corrupt_cache_entry_is_a_miss() -> None:
    engine, cache = FakeEngine(), FakeCache()
    decoded = _decode(engine, _record(0, "good entry"), _record(1, "corrupt entry"))
    records = [r for r in decoded if isinstance(r, Valid)]
    keys = [cache_key("t:", engine.model_version, r.chash) for r in records]
    cache.data[keys[0]] = tags_to_cache([])
    cache.data[keys[1]] = b"\xff not json"
    hits, misses = CacheLookup(cache, "t:", engine, Metrics())(list(records))
    assert [h.record for h in hits] == [records[0]] and hits[0].cached
    assert misses == [records[1]]
    TagBatch(engine, cache, "t:", Metrics())([records[1]])
    assert engine.runs == 1
    head, published, _ = cache.data[keys[1]].split(b"\n")  # refilled
    assert json.loads(published) == [{"tag": "words:2", "score": 0.8999999761581421}]


def test_a_hit_is_published_as_cached_and_its_evidence_follows_each_products_own_fields() -> None:
    engine, cache = FakeEngine(), FakeCache()
    spans = (EvidenceSpan("title", 0, 4, "Nike"), EvidenceSpan("title", 5, 9, "shoe"))
    tags = [Tag("brand:Nike", 0.9, spans[:1]), Tag("type:shoe", 0.7, spans[1:]), Tag("colour:red", 0.6)]
    same, spaced = (
        r for r in _decode(engine, _record(0, "Nike shoe"), _record(1, "  Nike   shoe")) if isinstance(r, Valid)
    )
    assert same.chash == spaced.chash, "one model text, so one cache entry"
    cache.data[cache_key("t:", engine.model_version, same.chash)] = tags_to_cache(
        tags, (), fields_print("Nike shoe", None)
    )
    hits, misses = CacheLookup(cache, "t:", engine, Metrics())([same, spaced])
    assert misses == [] and [h.cached for h in hits] == [True, True]
    events = [TagEvent.model_validate_json(m.value) for m in BuildMessages(KafkaSettings(), engine)(list(hits), 1.7e9)]
    evidence = [[[(e.start, e.end, e.text) for e in t.evidence or []] for t in ev.tags] for ev in events]
    assert evidence[0] == [[(0, 4, "Nike")], [(5, 9, "shoe")], []], "same fields: as cached"
    assert evidence[1] == [[(2, 6, "Nike")], [(9, 13, "shoe")], []], "other whitespace: moved to this title"
    assert [t.tag for t in events[1].tags] == ["brand:Nike", "type:shoe", "colour:red"]


def test_identical_texts_in_a_batch_get_evidence_in_their_own_fields() -> None:
    class Spans(FakeEngine):
        def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]:
            return [
                [t._replace(evidence=(EvidenceSpan("title", 0, 3, "red"),)) for t in row]
                for row in super().decode(items, outputs)
            ]

    engine, cache = Spans(), FakeCache()
    batch = [r for r in _decode(engine, _record(0, "red cap"), _record(1, " red  cap")) if isinstance(r, Valid)]
    out = TagBatch(engine, cache, "t:", Metrics())(batch)
    assert engine.runs == 1, "one text: inferred once"
    assert [[e.start for e in o.tags[0].evidence] for o in out if isinstance(o, Tagged)] == [[0], [1]]
    (entry,) = cache.data.values()
    assert json.loads(entry.split(b"\n")[0])["fields"] == fields_print("red cap", None), "whose fields its spans index"


def test_inference_failure_is_isolated_to_the_poison_item() -> None:
    engine = FakeEngine()
    titles = ["a", "b", "c POISON", "d", "e"]
    records = [r for r in _decode(engine, *(_record(i, t) for i, t in enumerate(titles))) if isinstance(r, Valid)]
    out = TagBatch(engine, FakeCache(), "t:", Metrics())(records)
    kinds = [o.invalid.reason if isinstance(o, Rejected) else "tagged" for o in out]
    assert kinds == ["tagged", "tagged", "inference_failed", "tagged", "tagged"]


def test_messages_validate_against_the_contracts() -> None:
    engine = FakeEngine()
    valid, rejected = _decode(engine, _record(0, "red shirt"), ConsumedRecord("in", 0, 1, None, b"\xff", 5))
    assert isinstance(valid, Valid) and isinstance(rejected, Rejected)
    k = KafkaSettings(output_topic="out", dlq_topic="dlq")
    tag_msg, dead_msg = BuildMessages(k, engine)(
        [Tagged(valid, TagResult([]), cached=False), rejected], 1_750_000_000.0
    )
    ev = TagEvent.model_validate_json(tag_msg.value)
    assert (tag_msg.topic, tag_msg.key, ev.source_offset) == ("out", b"p0", 0)
    assert (ev.model_version, ev.taxonomy_version) == ("fake-1", "tax-1")
    dl = DeadLetter.model_validate_json(dead_msg.value)
    assert (dead_msg.topic, dl.error_kind, dl.offset, dl.value_b64) == ("dlq", "not_utf8", 1, "/w==")


def test_identical_content_in_a_batch_is_inferred_once() -> None:
    engine, cache = FakeEngine(), FakeCache()
    decoded = _decode(engine, _record(0, "same text"), _record(1, "same text"), _record(2, "other"))
    records = [r for r in decoded if isinstance(r, Valid)]
    out = TagBatch(engine, cache, "t:", Metrics())(records)
    assert [o.record.product.product_id for o in out if isinstance(o, Tagged)] == ["p0", "p1", "p2"]
    hits, misses = CacheLookup(cache, "t:", engine, Metrics())(list(records))
    assert len(hits) == 3 and not misses
    assert [o.cached for o in out if isinstance(o, Tagged)] == [False, False, False]
    assert engine.inferred == ["same text", "other"]
    assert len(cache.data) == 2


def test_send_order_turns_follow_the_tickets_and_skip_released_ones() -> None:
    import threading

    import pytest

    from worker.clock import Abort
    from worker.publish import PublishAborted, SendOrder
    from worker.testing import FakeClock

    order, abort, sent = SendOrder(), Abort(FakeClock()), []
    t0, t1, t2 = order.ticket(), order.ticket(), order.ticket()
    entered = threading.Event()

    def publish(ticket: int) -> None:
        entered.set()
        with order.turn(ticket, abort):
            sent.append(ticket)

    late = threading.Thread(target=publish, args=(t2,))
    late.start()
    assert entered.wait(5)
    order.release(t1)  # batch 1 failed before publishing: it passes its turn on
    assert sent == [], "ticket 2 published before ticket 0"
    publish(t0)
    late.join(5)
    assert sent == [t0, t2] and not late.is_alive()
    order.release(t0)  # releasing a passed ticket again is harmless
    # a batch whose turn never comes gives up when the shutdown aborts it
    t3, t4 = order.ticket(), order.ticket()
    abort.set()
    with pytest.raises(PublishAborted), order.turn(t4, abort):
        pass
    with order.turn(t3, abort):  # its own turn still comes at once
        sent.append(t3)
    assert sent[-1] == t3
