"""Shadow model with fakes: its events go to the shadow topic only, agreement is measured, the budget
skips it when the batch thread is behind; `tagger compare` figures from hand-made events."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.events import TagEvent, TagScore
from worker.clock import Abort
from worker.compare import compare
from worker.engine import Encoded, Outputs, Tag
from worker.health import Health
from worker.loop import RunBatch
from worker.metrics import Metrics
from worker.outputs import BuildMessages
from worker.publish import Publish
from worker.records import DecodeRecords, Parsed, Tokenize, Valid
from worker.settings import KafkaSettings, LimitSettings, SettingsError, load_settings
from worker.shadow import ShadowRun, agreement
from worker.tagging import TagBatch
from worker.testing import FakeCache, FakeClock, FakeEngine, FakePublisher
from worker.transport import ConsumedRecord

KAFKA = KafkaSettings(input_topic="in", output_topic="out", dlq_topic="dlq")


class Candidate(FakeEngine):
    """Tags like FakeEngine, plus `colour:red` for red items; drops the word count of 'drop' titles."""

    model_version = "cand-2"
    taxonomy_version = "tax-2"

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]:
        out = []
        for tags, x in zip(super().decode(items, outputs), items, strict=True):
            tags = [] if "drop" in x.text else tags
            out.append(tags + ([Tag("colour:red", 0.8)] if "red" in x.text else []))
        return out


def test_agreement_is_per_facet() -> None:
    a = agreement(["brand:Nike", "category:Shoes", "colour:red"], ["brand:Nike", "category:Shirts", "use:gym"])
    assert a.jaccard == {"brand": 1.0, "category": 0.0, "colour": 0.0, "use": 0.0}
    assert (a.added, a.removed, a.identical) == (2, 2, False)
    assert agreement(["a:x"], ["a:x"]).identical


def _valid(engine: FakeEngine, titles: list[str], received: float) -> list[Valid]:
    metrics = Metrics()
    records = [
        ConsumedRecord("in", 0, i, None, json.dumps({"product_id": f"p{i}", "title": t}).encode(), 5)
        for i, t in enumerate(titles)
    ]
    parsed = [p for p in DecodeRecords(LimitSettings(), metrics)(records, received) if isinstance(p, Parsed)]
    return [v for v in Tokenize(engine, metrics)(parsed) if isinstance(v, Valid)]


def _run(budget_s: float, waited_s: float) -> tuple[FakePublisher, Metrics, Candidate]:
    clock = FakeClock()
    live, candidate = FakeEngine(), Candidate()
    metrics, health, abort = Metrics(now=clock.now), Health(), Abort(clock)
    publisher = FakePublisher(clock)
    run = RunBatch(
        TagBatch(live, FakeCache(), "t:", metrics),
        BuildMessages(KAFKA, live),
        Publish(publisher, KAFKA, metrics, health, abort, clock),
        metrics,
        wall_clock=lambda: 1_750_000_000.0,
        shadow=ShadowRun(candidate, "out.shadow", budget_s, metrics),
    )
    run(list(_valid(live, ["red shirt", "blue drop jeans", "green cap"], clock.now() - waited_s)), live)
    return publisher, metrics, candidate


def test_shadow_events_go_to_the_shadow_topic_only_and_agreement_is_counted() -> None:
    publisher, metrics, _ = _run(budget_s=1.0, waited_s=0.0)
    live = [TagEvent.model_validate_json(v) for v in publisher.values("out")]
    shadow = [TagEvent.model_validate_json(v) for v in publisher.values("out.shadow")]
    assert {e.model_version for e in live} == {"fake-1"}, "a shadow event reached the live topic"
    assert {(e.model_version, e.taxonomy_version) for e in shadow} == {("cand-2", "tax-2")}
    assert [e.product_id for e in shadow] == [e.product_id for e in live] == ["p0", "p1", "p2"]
    # same product and content -> the shadow's id differs only through its model version
    assert all(
        s.event_id != lv.event_id and s.content_hash == lv.content_hash for s, lv in zip(shadow, live, strict=True)
    )
    assert [[t.tag for t in e.tags] for e in shadow] == [["words:2", "colour:red"], [], ["words:2"]]
    sample = metrics.registry.get_sample_value
    assert sample("tagger_shadow_items_total") == 3 and sample("tagger_shadow_identical_total") == 1
    assert sample("tagger_shadow_tags_added_total") == 1 and sample("tagger_shadow_tags_removed_total") == 1
    # words facet: 1.0 (red shirt), 0.0 (dropped), 1.0 (green cap); colour facet: 0.0 once
    assert sample("tagger_shadow_jaccard_count", {"facet": "words"}) == 3
    assert sample("tagger_shadow_jaccard_sum", {"facet": "words"}) == 2.0
    assert sample("tagger_shadow_jaccard_sum", {"facet": "colour"}) == 0.0
    assert sample("tagger_produced_total") == 3  # live events only


def test_a_batch_behind_its_budget_skips_the_shadow() -> None:
    publisher, metrics, candidate = _run(budget_s=0.2, waited_s=5.0)
    assert publisher.values("out.shadow") == [] and len(publisher.values("out")) == 3
    assert candidate.runs == 0
    assert metrics.registry.get_sample_value("tagger_shadow_skipped_batches_total") == 1


def test_a_failing_shadow_never_fails_the_live_batch() -> None:
    clock = FakeClock()
    live, candidate = FakeEngine(), Candidate()
    candidate.broken = True
    metrics = Metrics(now=clock.now)
    publisher = FakePublisher(clock)
    run = RunBatch(
        TagBatch(live, FakeCache(), "t:", metrics),
        BuildMessages(KAFKA, live),
        Publish(publisher, KAFKA, metrics, Health(), Abort(clock), clock),
        metrics,
        shadow=ShadowRun(candidate, "out.shadow", 1.0, metrics),
    )
    result = run(list(_valid(live, ["red shirt"], clock.now())), live)
    assert result.tagged == 1 and len(publisher.values("out")) == 1 and publisher.values("out.shadow") == []
    assert metrics.registry.get_sample_value("tagger_shadow_failures_total") == 1


def test_shadow_topic_must_not_be_the_live_topic() -> None:
    with pytest.raises(SettingsError, match="TAGGER_SHADOW__OUTPUT_TOPIC must differ"):
        load_settings(shadow={"path": "/m/shadow", "output_topic": "products.tags"})
    assert load_settings(shadow={"path": "/m/shadow"}).shadow.output_topic == "products.tags.shadow"


def _event(pid: str, chash: str, version: str, tags: list[str]) -> TagEvent:
    return TagEvent(
        event_id=f"{pid}-{version}",
        product_id=pid,
        tags=[TagScore(tag=t, score=0.9) for t in tags],
        model_version=version,
        content_hash=chash,
        tagged_at=datetime(2026, 1, 1, tzinfo=UTC),
        cached=False,
        source_topic="in",
        source_partition=0,
        source_offset=0,
    )


def test_compare_joins_by_product_and_content() -> None:
    live = [
        _event("a", "h1", "v1", ["brand:Nike", "category:Shoes"]),
        _event("b", "h2", "v1", ["brand:Puma"]),
        _event("c", "h3", "v1", ["brand:Sony"]),  # no shadow event: not compared
        _event("d", "old", "v1", ["brand:Lenovo"]),  # the shadow saw newer content: not the same input
    ]
    shadow = [
        _event("a", "h1", "v2", ["brand:Nike", "category:Shoes"]),
        _event("b", "h2", "v2", ["brand:Nike", "colour:red"]),
        _event("d", "new", "v2", ["brand:Lenovo"]),
    ]
    figures = compare(live, shadow)
    assert figures["items"] == 2 and figures["live_only"] == 2 and figures["shadow_only"] == 1
    assert figures["identical_share"] == 0.5
    assert figures["added_per_item"] == 1.0 and figures["removed_per_item"] == 0.5  # b: +Nike +red, -Puma
    assert figures["jaccard_by_facet"] == {"brand": 0.5, "category": 1.0, "colour": 0.0}
    assert (figures["live_versions"], figures["shadow_versions"]) == (["v1"], ["v2"])
