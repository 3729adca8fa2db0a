"""Issue 13, pure parts: evidence spans (Latin and CJK, indices into the original text), cache entries
with evidence, override application, the review decision and feedback decoding."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.events import ReviewItem, TagEvent, TagFeedback
from worker.decode import Invalid
from worker.engine import Tag
from worker.evidence import (
    EvidenceSpan,
    ExplainBasis,
    feature_shares,
    fields_of,
    near_misses,
    neighbourhood,
    rebase,
    tag_evidence,
)
from worker.feedback import decode_feedback
from worker.lexical import LexicalChannel, Trace
from worker.overrides import Override, apply_overrides
from worker.review_queue import review_reasons
from worker.settings import LimitSettings
from worker.tagging import legacy_entry, result_from_cache, tags_from_cache, tags_to_cache

BRANDS = ["brand:Nike", "brand:Puma", "brand:Sony", "brand:华为", "brand:小米"]
LABELS = [*BRANDS, "category:Footwear", "category:Electronics"]
TEXTS = [
    "Nike red running shoes",
    "Nike blue sneakers",
    "Puma black sandals",
    "Sony smart watch",
    "华为手机 黑色 智能",
    "华为 平板电脑",
    "小米手机 白色",
]
TAGS = [[0, 5], [0, 5], [1, 5], [2, 6], [3, 6], [3, 6], [4, 6]]


@pytest.fixture(scope="module")
def channel() -> LexicalChannel:
    return LexicalChannel.build(TEXTS * 2, TAGS * 2, LABELS, np.ones(len(LABELS), dtype=bool))


@pytest.fixture(scope="module")
def basis(channel: LexicalChannel) -> ExplainBasis:
    return ExplainBasis.build(LABELS, [0.3] * len(LABELS), ["brand#0", "category#0"], channel)


def _explain(channel: LexicalChannel, basis: ExplainBasis, title: str, description: str | None, tag: str) -> tuple:
    trace = Trace()
    channel.scores([title if not description else f"{title} . {description}"], trace=trace)
    return tag_evidence(tag, fields_of(title, description), basis, neighbourhood(basis, trace.item(0)), 3)


def _assert_indexes_original(spans: tuple[EvidenceSpan, ...], title: str, description: str | None) -> None:
    assert spans, "no evidence"
    for sp in spans:
        field = title if sp.field == "title" else description
        assert field is not None and field[sp.start : sp.end] == sp.text


def test_latin_evidence_indexes_the_original_text(channel: LexicalChannel, basis: ExplainBasis) -> None:
    # Odd spacing, upper case, punctuation: the model text is normalised, the spans are not.
    title, description = "Brand new  NIKE   Running shoes,red", "Sold by a store.   Great running  SHOES"
    spans = _explain(channel, basis, title, description, "category:Footwear")
    _assert_indexes_original(spans, title, description)
    assert {sp.text.casefold() for sp in spans} & {"running", "shoes", "nike", "red"}
    brand = _explain(channel, basis, title, description, "brand:Nike")
    _assert_indexes_original(brand, title, description)
    assert brand[0] == EvidenceSpan("title", 11, 15, "NIKE"), "the named value comes first"


def test_cjk_and_fullwidth_evidence_index_the_original_text(channel: LexicalChannel, basis: ExplainBasis) -> None:
    title, description = "ＨＵＡＷＥＩ 华为手机（黑色）", "全新 华为 平板"
    spans = _explain(channel, basis, title, description, "brand:华为")
    _assert_indexes_original(spans, title, description)
    assert spans[0] == EvidenceSpan("title", 7, 9, "华为")
    cat = _explain(channel, basis, title, description, "category:Electronics")
    _assert_indexes_original(cat, title, description)
    assert all(not (set(sp.text) & set("（）")) for sp in cat), "punctuation is never evidence"
    # NFKC maps full-width letters one to one: a Latin feature found there points at the original letters.
    fields = fields_of("ＮＩＫＥ shoes", None)
    (hit,) = fields[0].feature_spans("w:nike")
    assert fields[0].span(*hit) == EvidenceSpan("title", 0, 4, "ＮＩＫＥ")


def test_feature_shares_add_up_to_the_neighbour_score(channel: LexicalChannel) -> None:
    trace = Trace()
    texts = ["Nike running shoes red", "华为手机 黑色"]
    scores = channel.index.scores(texts, trace=trace)
    for i in range(len(texts)):
        for j in range(len(LABELS)):
            shares = feature_shares(channel, trace.item(i), j)
            assert sum(shares.values()) == pytest.approx(float(scores[i, j]), abs=1e-4)
    assert scores[0, 0] > 0.5 and scores[1, 3] > 0.5  # the test is not vacuous


def test_a_model_without_lexical_channel_gives_value_spans_only() -> None:
    plain = ExplainBasis.build(LABELS, [0.3] * len(LABELS), [], None)
    fields = fields_of("Puma black sandals", None)
    assert tag_evidence("brand:Puma", fields, plain, None, 3) == (EvidenceSpan("title", 0, 4, "Puma"),)
    assert tag_evidence("category:Footwear", fields, plain, None, 3) == ()


def test_near_misses_and_expected_facets(basis: ExplainBasis) -> None:
    row = np.array([0.35, 0.25, 0.1, 0.0, 0.29, 0.05, 0.25], dtype=np.float32)
    assert near_misses(basis, row, {"category:Footwear"}, 0.1) == [
        ("brand:小米", pytest.approx(0.29)),
        ("brand:Puma", 0.25),
    ]
    # A single-valued slot that has its value has no near misses worth a look.
    assert near_misses(basis, row, {"brand:Nike"}, 0.1) == [("category:Electronics", 0.25)]
    assert near_misses(basis, row, set(), 0.0) == []
    assert basis.expected_facets(0.9) == {"brand", "category"}
    assert basis.expected_facets(1.0) == set(), "1.0 switches empty-facet routing off"


def test_cache_entries_keep_evidence_and_candidates_and_read_the_old_formats() -> None:
    ev = (EvidenceSpan("title", 0, 4, "Nike"),)
    tags = [Tag("brand:Nike", 0.91, ev), Tag("category:Footwear", 0.8)]
    cands = [Tag("brand:Puma", 0.25)]
    entry = tags_to_cache(tags, cands, "f1")
    head, published, near = (json.loads(line) for line in entry.split(b"\n"))
    assert head == {
        "v": 3,
        "fields": "f1",
        "tags": [["brand:Nike", 0.91], ["category:Footwear", 0.8]],
        "candidates": [["brand:Puma", 0.25]],
    }
    assert published[0] == {
        "tag": "brand:Nike",
        "score": 0.91,
        "evidence": [{"field": "title", "start": 0, "end": 4, "text": "Nike"}],
    }, "kept as published"
    assert near == [{"tag": "brand:Puma", "score": 0.25}]
    r = result_from_cache(entry)
    assert r is not None and r.fields == "f1"
    assert r.scored() == ([Tag("brand:Nike", 0.91), Tag("category:Footwear", 0.8)], cands), "no spans parsed"
    assert (r.tags, r.candidates) == (tags, cands)
    assert json.loads(r.json()) == published
    for old, want in ((legacy_entry(tags, cands), (tags, cands)), (b'[["a:b",0.5]]', ([Tag("a:b", 0.5)], []))):
        r = result_from_cache(old)
        assert r is not None and (r.tags, r.candidates) == want and r.fields is None
        assert r.scored() == want
    assert tags_from_cache(b'[["a:b",0.5]]') == [Tag("a:b", 0.5)]
    for corrupt in (
        b'{"tags": 3}',
        b'[["a:b", 0.5, [["title", "0", 4, "Nike"]]]]',  # spans of the wrong types
        b'{"v": 3, "fields": "f", "tags": [[1, 0.5]], "candidates": []}\n[]\n[]',
        b'{"v": 3, "fields": "f", "tags": [["a:b", "high"]], "candidates": []}\n[]\n[]',
        b'{"v": 3, "fields": "f", "tags": [], "candidates": []}\n[]',
        b'{"v": 3, "fields": "f", "tags": [], "candidates": []}\n[{"tag": "a:\n[]',
        b'{"v": 3, "fields": "f", "tags": []}\n[]\n[]',
        b'["v", 3]\n[]\n[]',
        b'{"v": 4, "fields": "f", "tags": [], "candidates": []}\n[]\n[]',  # a newer writer's: re-inferred
    ):
        assert result_from_cache(corrupt) is None, corrupt


def test_rebase_moves_spans_to_another_products_whitespace() -> None:
    spans = (EvidenceSpan("title", 5, 9, "Nike"), EvidenceSpan("description", 0, 3, "red"))
    assert rebase(spans, "Best Nike", "red") == spans
    assert rebase(spans, "Best   Nike", None) == (EvidenceSpan("title", 7, 11, "Nike"),)


def _fb(action: str, tag: str) -> Override:
    return Override(action, "ana", "2026-11-30T12:00:00Z")


def test_overrides_reject_add_accept() -> None:
    tags = [Tag("brand:Nike", 0.6), Tag("category:Footwear", 0.9), Tag("colour:red", 0.5)]
    cands = [Tag("colour:blue", 0.3), Tag("brand:Puma", 0.25)]
    out, near = apply_overrides(
        tags,
        cands,
        {"colour:red": _fb("reject", ""), "colour:blue": _fb("reject", ""), "category:Footwear": _fb("accept", "")},
    )
    assert [(t.tag, t.score, t.source) for t in out] == [("category:Footwear", 1.0, "human"), ("brand:Nike", 0.6, None)]
    assert near == [Tag("brand:Puma", 0.25)]
    # An added value of a single-valued slot replaces the model's.
    out, near = apply_overrides(tags, cands, {"brand:Puma": _fb("add", "")}, frozenset({"brand#0"}))
    expected = [("brand:Puma", "human"), ("category:Footwear", None), ("colour:red", None)]
    assert [(t.tag, t.source) for t in out] == expected
    assert near == [Tag("colour:blue", 0.3)]
    assert apply_overrides(tags, cands, {}) == (tags, cands)


def test_review_reasons() -> None:
    thresholds = {"brand:Nike": 0.5, "brand:Puma": 0.4, "category:Footwear": 0.5}.get
    tags = [Tag("brand:Nike", 0.55), Tag("category:Footwear", 0.95), Tag("colour:red", 0.51)]  # colour: no threshold
    reasons = review_reasons(tags, [Tag("brand:Puma", 0.35)], thresholds, {"brand", "size"}, 0.1)
    assert [(r.kind, r.facet, r.tag) for r in reasons] == [
        ("near_threshold", "brand", "brand:Nike"),
        ("near_threshold", "brand", "brand:Puma"),
        ("empty_facet", "size", None),
    ]
    assert review_reasons(tags, [], thresholds, set(), 0.01) == []
    # The worker's default: a near miss alone does not route an item (it stays a candidate).
    assert review_reasons([Tag("brand:Nike", 0.9)], [Tag("brand:Puma", 0.35)], thresholds, (), 0.1, (), False) == []
    # A facet a reviewer decided on, and human tags, are not routed again.
    human = [Tag("brand:Nike", 1.0, source="human"), Tag("category:Footwear", 0.95)]
    assert review_reasons(human, [Tag("brand:Puma", 0.35)], thresholds, {"size"}, 0.1, settled={"brand", "size"}) == []


LIMITS = LimitSettings()


def _feedback(**over: object) -> bytes:
    body = {"product_id": "p-1", "action": "reject", "tag": "brand:Nike", "reviewer": "ana"}
    body["at"] = "2026-11-30T12:00:00Z"
    body.update(over)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_utf8"),
        (b"[1]", "not_object"),
        (_feedback(action="delete"), "schema"),
        (_feedback(product_id=""), "schema"),
        (_feedback(tag="no-facet"), "bad_tag"),
        (_feedback(tag="brand:   "), "bad_tag"),
        (None, "not_json"),
    ],
)
def test_bad_feedback_has_a_reason(raw: bytes | None, reason: str) -> None:
    out = decode_feedback(raw, LIMITS)
    assert isinstance(out, Invalid) and out.reason == reason


def test_valid_feedback_and_naive_times_are_utc() -> None:
    fb = decode_feedback(_feedback(at="2026-11-30T12:00:00", note="wrong brand"), LIMITS)
    assert isinstance(fb, TagFeedback) and fb.at == datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert Override.of(fb) == Override("reject", "ana", "2026-11-30T12:00:00Z", None)


def test_old_tag_events_validate_and_review_items_are_tag_events() -> None:
    old = {"event_id": "e", "product_id": "p", "tags": [{"tag": "a:b", "score": 0.5}], "model_version": "m",
           "content_hash": "h", "tagged_at": "2026-11-30T12:00:00Z", "cached": False, "source_topic": "t",
           "source_partition": 0, "source_offset": 1}  # fmt: skip
    ev = TagEvent.model_validate(old)
    assert ev.tags[0].evidence is None and ev.tags[0].source is None
    item = ReviewItem.model_validate({**old, "title": "x", "reasons": [{"kind": "empty_facet", "facet": "brand"}]})
    assert item.candidates == [] and TagEvent.model_validate(item.model_dump()).product_id == "p"
