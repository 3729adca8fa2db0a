"""Issue 13 through the real poll loop and steps over the fakes (worker/testing.py): corrections that
stick (cache hits, fresh inference), feedback committed only once written, bad feedback
dead-lettered, Redis loss degrading to model-only tags, uncertain items on the review topic."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np

from schemas.events import DeadLetter, ReviewItem, TagEvent
from worker.engine import Encoded, Outputs, Tag
from worker.evidence import ExplainBasis
from worker.loop import Loop, build_loop
from worker.metrics import Metrics
from worker.overrides import Override
from worker.settings import BatchingSettings, KafkaSettings, ReviewSettings, load_settings
from worker.testing import FakeCache, FakeClock, FakeConsumer, FakeEngine, FakeOverrides, FakePublisher, ManualExecutor
from worker.transport import TopicPartition

KAFKA = KafkaSettings(
    input_topic="in",
    output_topic="out",
    dlq_topic="dlq",
    feedback_topic="fb",
    review_topic="rev",
    commit_interval_ms=0,
    poll_timeout_ms=1,
)
LABELS = [f"words:{n}" for n in range(1, 9)]


class LabelledEngine(FakeEngine):
    """FakeEngine with labels `words:1..8` (threshold 0.85): a text of n words scores 0.9 on `words:n`
    and 0.8 on `words:n+1` (a near miss)."""

    basis = ExplainBasis.build(LABELS, [0.85] * len(LABELS), [], None)  # multi-valued: near misses stay

    @property
    def explain_basis(self) -> ExplainBasis:
        return self.basis

    def run(self, items: list[Encoded]) -> Outputs:
        super().run(items)
        scores = np.zeros((len(items), len(LABELS)), dtype=np.float32)
        for i, x in enumerate(items):
            scores[i, len(x) - 3] = 0.9
            scores[i, min(len(x) - 2, len(LABELS) - 1)] = 0.8
        return Outputs(scores, None)

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]:
        scores = outputs.scores
        return [[Tag(f"words:{len(x) - 2}", round(float(scores[i, len(x) - 3]), 4))] for i, x in enumerate(items)]


@dataclass
class Rig:
    consumer: FakeConsumer
    publisher: FakePublisher
    store: FakeOverrides
    metrics: Metrics
    stop: threading.Event
    loop: Loop
    executors: tuple[ManualExecutor, ManualExecutor]

    def run_all(self, max_steps: int = 30) -> None:
        for _ in range(max_steps):
            self.loop.step()
            for ex in self.executors:
                ex.run_all()
            c = self.consumer
            fetched = all(c.positions[tp] == len(c.logs[tp]) for tp in c.positions)
            idle = not self.loop.in_flight and not self.loop.ready and not len(self.loop.batcher)
            if fetched and idle and not self.loop.feedback_queue:
                self.loop.step()
                self.loop.step()
                return
        raise AssertionError("loop did not settle")

    def events(self, topic: str = "out") -> list[dict]:
        return [json.loads(v) for v in self.publisher.values(topic)]

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0


def rig() -> Rig:
    clock = FakeClock()
    consumer, publisher, engine, cache = (
        FakeConsumer("in", 1, {"fb": 1}),
        FakePublisher(clock),
        LabelledEngine(),
        FakeCache(),
    )
    store = FakeOverrides()
    settings = load_settings(
        kafka=KAFKA,
        batching=BatchingSettings(max_items=4, max_wait_ms=0, max_in_flight=1),
        review=ReviewSettings(margin=0.1, near_misses=True),
    )
    tag_ex, fb_ex = ManualExecutor(), ManualExecutor()
    loop = build_loop(
        settings,
        engine,
        cache,
        lambda: consumer,
        publisher,
        clock,
        executor=tag_ex,
        overrides=store,
        feedback_executor=fb_ex,
        wall_clock=lambda: 1_750_000_000.0,
    )
    assert loop.start()
    return Rig(consumer, publisher, store, loop.metrics, loop.stop, loop, (tag_ex, fb_ex))


def product(pid: str, title: str) -> bytes:
    return json.dumps({"product_id": pid, "title": title}).encode()


def feedback(pid: str, action: str, tag: str) -> bytes:
    return json.dumps(
        {"product_id": pid, "action": action, "tag": tag, "reviewer": "ana", "at": "2026-11-30T12:00:00Z"}
    ).encode()


def tags_of(event: dict) -> dict[str, tuple[float, str | None]]:
    return {t["tag"]: (t["score"], t.get("source")) for t in event["tags"]}


FB = TopicPartition("fb", 0)


def test_corrections_stick_on_cache_hits_and_fresh_inference() -> None:
    r = rig()
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    assert tags_of(r.events()[-1]) == {"words:3": (0.9, None)}
    r.consumer.produce(feedback("p-1", "reject", "words:3"), topic="fb")
    r.consumer.produce(feedback("p-1", "add", "colour:red"), topic="fb")
    r.run_all()
    assert r.consumer.committed_offsets[FB] == 2 and r.store.writes == 2
    r.consumer.produce(product("p-1", "red cotton shirt"))  # a cache hit
    r.consumer.produce(product("p-1", "red cotton shirt XL"))  # fresh inference: words:4
    r.consumer.produce(product("p-2", "red cotton shirt"))  # another product: no overrides
    r.run_all()
    last = r.events()[-3:]  # cache hits leave before inferred items
    (hit,) = [e for e in last if e["product_id"] == "p-1" and e["cached"]]
    (fresh,) = [e for e in last if e["product_id"] == "p-1" and not e["cached"]]
    (other,) = [e for e in last if e["product_id"] == "p-2"]
    assert hit["cached"] and tags_of(hit) == {"colour:red": (1.0, "human")}
    assert not fresh["cached"] and tags_of(fresh) == {"colour:red": (1.0, "human"), "words:4": (0.9, None)}
    assert tags_of(other) == {"words:3": (0.9, None)}
    for e in (hit, fresh, other):
        TagEvent.model_validate(e)
    assert r.value("tagger_overrides_applied_total") == 2
    # Accepting a tag marks it human; the last decision on a tag wins.
    r.consumer.produce(feedback("p-1", "accept", "words:3"), topic="fb")
    r.run_all()
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    assert tags_of(r.events()[-1]) == {"words:3": (1.0, "human"), "colour:red": (1.0, "human")}


def test_feedback_is_committed_only_once_its_override_is_written() -> None:
    r = rig()
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    r.store.fail_next = 3  # Redis refuses three attempts, then is back
    r.consumer.produce(feedback("p-1", "reject", "words:3"), topic="fb")
    r.run_all()
    assert r.value("tagger_feedback_retries_total") == 3
    assert r.consumer.committed_offsets[FB] == 1 and "words:3" in r.store.data["p-1"]
    # Redis down at shutdown: the feedback batch gives up, its offset is not committed, nothing is written.
    r.store.down = True
    r.consumer.produce(feedback("p-1", "add", "colour:blue"), topic="fb")
    r.stop.set()
    r.run_all()
    assert r.consumer.committed_offsets[FB] == 1 and "colour:blue" not in r.store.data["p-1"]
    assert not r.loop.failed, "an unavailable Redis is a fault to retry, not a failed worker"


def test_bad_feedback_is_dead_lettered_with_a_reason_and_committed() -> None:
    r = rig()
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    for raw in (b"{oops", feedback("p-1", "reject", "nofacet"), feedback("p-404", "reject", "words:3")):
        r.consumer.produce(raw, topic="fb")
    r.consumer.produce(feedback("p-1", "reject", "words:3"), topic="fb")
    r.run_all()
    dead = [DeadLetter.model_validate_json(v) for v in r.publisher.values("dlq")]
    assert [(d.error_kind, d.topic, d.offset) for d in dead] == [
        ("not_json", "fb", 0),
        ("bad_tag", "fb", 1),
        ("unknown_product", "fb", 2),
    ]
    assert r.consumer.committed_offsets[FB] == 4 and list(r.store.data) == ["p-1"]
    assert r.value("tagger_feedback_records_total", outcome="unknown_product") == 1


def test_without_redis_tag_events_go_out_model_only() -> None:
    r = rig()
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    r.store.data["p-1"] = {"words:3": Override("reject", "ana", "2026-11-30T12:00:00Z")}
    r.store.down = True
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    assert tags_of(r.events()[-1]) == {"words:3": (0.9, None)}
    assert r.value("tagger_overrides_unavailable_total") == 1
    r.store.down = False
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    assert tags_of(r.events()[-1]) == {}


def test_uncertain_items_go_to_review_with_evidence_and_candidates() -> None:
    r = rig()
    r.consumer.produce(product("p-1", "pack of 3"))  # words:3 at 0.9, threshold 0.85: within the margin
    r.run_all()
    (item,) = [ReviewItem.model_validate_json(v) for v in r.publisher.values("rev")]
    assert item.product_id == "p-1" and item.title == "pack of 3"
    assert [(x.kind, x.tag) for x in item.reasons] == [("near_threshold", "words:3"), ("near_threshold", "words:4")]
    assert [c.tag for c in item.candidates] == ["words:4"]
    (ev,) = item.tags[0].evidence or []
    assert (ev.field, ev.start, ev.end, ev.text) == ("title", 8, 9, "3")
    assert r.events()[0]["event_id"] == item.event_id
    # Once a reviewer decided on the facet, the product is not routed again.
    r.consumer.produce(feedback("p-1", "accept", "words:3"), topic="fb")
    r.run_all()
    r.consumer.produce(product("p-1", "pack of 3"))
    r.run_all()
    assert len(r.publisher.values("rev")) == 1
    assert r.value("tagger_review_routed_total", reason="near_threshold") == 1
    assert r.value("tagger_review_considered_total") == 2


def test_the_feedback_queue_is_bounded_by_reading_records_again() -> None:
    r = rig()
    r.loop.feedback_batch = 2  # queue cap: 2 batches = 4 records
    r.consumer.produce(product("p-1", "red cotton shirt"))
    r.run_all()
    for i in range(6):
        r.consumer.produce(feedback("p-1", "add", f"colour:c{i}"), topic="fb")
    r.loop.step()  # polls all 6 (the queue was empty)
    r.loop.step()  # submits one batch of 2; 4 stay queued: the cap
    assert len(r.loop.feedback_queue) == 4
    for i in range(6, 9):
        r.consumer.produce(feedback("p-1", "add", f"colour:c{i}"), topic="fb")
    r.loop.step()
    assert r.consumer.positions[FB] == 6, "records over the cap are sought back, not queued"
    assert len(r.loop.feedback_queue) == 4
    r.run_all()
    assert sorted(r.store.data["p-1"]) == sorted(f"colour:c{i}" for i in range(9))
    assert r.consumer.committed_offsets[FB] == 9
