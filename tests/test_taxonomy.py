"""Taxonomy version: recorded by training/export, carried by tag events; old consumers keep parsing."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import TagEvent
from tests.model_factory import manifest_fields
from worker.contract import Manifest, default_taxonomy_version
from worker.metrics import Metrics
from worker.outputs import BuildMessages
from worker.records import DecodeRecords, Parsed, Tokenize, Valid
from worker.settings import KafkaSettings, LimitSettings
from worker.tagging import Tagged, TagResult
from worker.testing import FakeEngine
from worker.transport import ConsumedRecord


class TagScoreV1(BaseModel):
    model_config = ConfigDict(frozen=True)

    tag: str
    score: float = Field(ge=0.0, le=1.0)


class TagEventV1(BaseModel):
    """`schemas.events.TagEvent` as published before `taxonomy_version` existed (its config unchanged:
    pydantic's default `extra="ignore"`), i.e. what a subscriber built against the old contract holds."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    event_id: str
    product_id: str
    tags: list[TagScoreV1]
    model_version: str
    content_hash: str
    tagged_at: datetime
    cached: bool
    source_topic: str
    source_partition: int
    source_offset: int


def _event_bytes() -> bytes:
    engine, metrics = FakeEngine(), Metrics()
    record = ConsumedRecord("in", 0, 7, b"p1", b'{"product_id": "p1", "title": "red cotton shirt"}', 5)
    parsed = DecodeRecords(LimitSettings(), metrics)([record], 0.0)
    assert isinstance(parsed[0], Parsed)
    valid = Tokenize(engine, metrics)([parsed[0]])[0]
    assert isinstance(valid, Valid)
    (msg,) = BuildMessages(KafkaSettings(), engine)([Tagged(valid, TagResult([]), cached=False)], 1_750_000_000.0)
    return msg.value


def test_new_events_carry_the_taxonomy_and_old_consumers_still_parse_them() -> None:
    raw = _event_bytes()
    new = TagEvent.model_validate_json(raw)
    assert new.taxonomy_version == "tax-1" and new.model_version == "fake-1"
    old = TagEventV1.model_validate_json(raw)
    assert old.event_id == new.event_id and old.model_version == "fake-1" and old.source_offset == 7
    assert "taxonomy_version" not in old.model_dump()


def test_new_consumers_parse_events_without_the_field() -> None:
    ev = TagEvent.model_validate_json(_event_bytes().replace(b'"taxonomy_version":"tax-1",', b""))
    assert ev.taxonomy_version is None


def test_default_taxonomy_version_is_a_hash_of_the_label_set() -> None:
    a = default_taxonomy_version(["brand:Nike", "category:Shoes"])
    assert a == default_taxonomy_version(["category:Shoes", "brand:Nike"])  # order does not matter
    assert a != default_taxonomy_version(["brand:Nike", "category:Shoe"])
    assert a.startswith("labels-") and len(a) == len("labels-") + 12


def test_manifest_records_the_taxonomy_and_falls_back_for_old_artifacts() -> None:
    fields = manifest_fields(["a:x", "b:y"])
    old = Manifest.model_validate(fields)
    assert old.taxonomy_version is None and old.taxonomy == default_taxonomy_version(["b:y", "a:x"])
    assert Manifest.model_validate(fields | {"taxonomy_version": "2026.11"}).taxonomy == "2026.11"
