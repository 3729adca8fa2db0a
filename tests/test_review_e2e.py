"""Issue 13 end to end: `tagger worker` as its own process on the real broker (Tansu) and Redis.
Corrections stick (cache hits, new content, a restart), uncertain items reach the review topic with
evidence, bad feedback is dead-lettered with its reason; `tagger feedback export` writes rows that
`tagger train` accepts."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from schemas.events import DeadLetter, ReviewItem, TagEvent
from scripts.local_services import create_topics, wait_until
from tests.kafka_helpers import produce, read_all, start_worker, values, worker_env
from tests.model_factory import build_tiny_base, cli_args, make_rows, train_args, write_jsonl


def _feedback(pid: str, action: str, tag: str, at: str = "2026-11-30T12:00:00Z") -> bytes:
    return json.dumps({"product_id": pid, "action": action, "tag": tag, "reviewer": "ana", "at": at}).encode()


def _product(pid: str, row: dict[str, object], suffix: str = "") -> bytes:
    """The product event of a training row (its title, and its description unless the title changed)."""
    description = None if suffix else row.get("description")
    return json.dumps({"product_id": pid, "title": f"{row['title']}{suffix}", "description": description}).encode()


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


def _events_of(broker: str, topic: str, pid: str, n: int) -> list[dict]:
    """At least `n` tag events of product `pid`, in topic order."""
    msgs = read_all(broker, topic, lambda m: sum(json.loads(x.value)["product_id"] == pid for x in m) >= n, 90)
    return [e for e in values(msgs) if e["product_id"] == pid]


def _tags(event: dict) -> dict[str, str | None]:
    return {t["tag"]: t.get("source") for t in event["tags"]}


def test_corrections_stick_through_a_real_worker_and_a_restart(
    broker: str, redis_url: str, tiny_model: Path, unique: str, tmp_path: Path
) -> None:
    topics = {t: f"{t}-{unique}" for t in ("in", "out", "dlq", "fb", "rev")}
    create_topics(broker, {name: 2 for name in topics.values()})
    # worker_env names the topics the same way: in-, out-, dlq-, fb-, rev- + the test's suffix
    env = worker_env(broker, redis_url, tiny_model, unique, TAGGER_REVIEW__MARGIN="0.6")  # route most items
    assert env["TAGGER_KAFKA__FEEDBACK_TOPIC"] == topics["fb"] and env["TAGGER_KAFKA__REVIEW_TOPIC"] == topics["rev"]
    rows = make_rows(20, seed=5)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        produce(
            broker,
            topics["in"],
            [_product(f"prod-{i}", r) for i, r in enumerate(rows)],
        )
        (first,) = _events_of(broker, topics["out"], "prod-0", 1)
        model_tags = [t["tag"] for t in first["tags"]]
        assert model_tags, "the tiny model tags its own training titles"
        rejected, added = model_tags[0], "colour:teal"
        feedback = [
            _feedback("prod-0", "reject", rejected),
            _feedback("prod-0", "add", added),
            b"{not json",
            _feedback("prod-1", "reject", "no-facet-here"),
            _feedback("never-seen", "reject", rejected),
        ]
        produce(broker, topics["fb"], feedback, keys=[b"prod-0", b"prod-0", None, b"prod-1", b"never-seen"])
        dlq = read_all(broker, topics["dlq"], lambda m: len(m) >= 3, 60)
        kinds = sorted(DeadLetter.model_validate_json(m.value).error_kind for m in dlq)
        assert kinds == ["bad_tag", "not_json", "unknown_product"]
        client = redis.Redis.from_url(redis_url)
        key = f"t-{unique}:overrides:prod-0"
        wait_until(lambda: client.hlen(key) == 2, 30, "both overrides written to Redis")
        # The same content again (a cache hit) and new content (fresh inference).
        produce(broker, topics["in"], [_product("prod-0", rows[0])])
        produce(broker, topics["in"], [_product("prod-0", rows[0], " limited edition")])
        later = _events_of(broker, topics["out"], "prod-0", 3)[1:]
        assert [e["cached"] for e in later] == [True, False]
        for e in later:
            TagEvent.model_validate(e)
            assert rejected not in _tags(e) and _tags(e)[added] == "human"
        rev = read_all(broker, topics["rev"], lambda m: len(m) >= 1, 30)
        items = [ReviewItem.model_validate_json(m.value) for m in rev]
        assert items and all(i.reasons for i in items)
        assert any(t.evidence for i in items for t in i.tags), "review items carry evidence"
        for i in items:
            for t in i.tags:
                for ev in t.evidence or []:
                    text = i.title if ev.field == "title" else i.description or ""
                    assert text[ev.start : ev.end] == ev.text
        _stop(worker)
        # A restart (and the cache gone: a new model version would miss it too) keeps the corrections.
        for k in client.scan_iter(f"t-{unique}:*"):
            if b":overrides:" not in k and b":tagged:" not in k:
                client.delete(k)
        worker = start_worker(env, log)
        produce(broker, topics["in"], [_product("prod-0", rows[0])])
        after = _events_of(broker, topics["out"], "prod-0", 4)[-1]
        assert not after["cached"] and rejected not in _tags(after) and _tags(after)[added] == "human"
    finally:
        if worker.poll() is None:
            _stop(worker)


def test_feedback_export_writes_rows_that_train_accepts(broker: str, unique: str, tmp_path: Path) -> None:
    from exporter import train
    from worker import feedback_export

    fb_topic, rev_topic = f"fb-{unique}", f"rev-{unique}"
    create_topics(broker, {fb_topic: 1, rev_topic: 1})
    base_rows = make_rows(60, seed=3)
    base = write_jsonl(tmp_path / "base.jsonl", base_rows)
    p0_tags = [str(t) for t in json.loads(json.dumps(base_rows[0]["tags"]))]
    review = {
        "event_id": "e", "product_id": "new-1", "tags": [{"tag": "category:Footwear", "score": 0.55},
        {"tag": "brand:Puma", "score": 0.6}], "model_version": "m", "content_hash": "h",
        "tagged_at": "2026-11-30T12:00:00Z", "cached": False, "source_topic": "in", "source_partition": 0,
        "source_offset": 1, "title": "Puma green sneakers", "description": None,
        "reasons": [{"kind": "near_threshold", "facet": "brand", "tag": "brand:Puma"}],
    }  # fmt: skip
    produce(broker, rev_topic, [json.dumps(review).encode()])
    produce(
        broker,
        fb_topic,
        [
            _feedback("p0", "reject", p0_tags[1]),
            _feedback("p0", "add", "colour:red"),
            _feedback("new-1", "reject", "brand:Puma"),
            _feedback("new-1", "add", "brand:Nike"),
            _feedback("new-1", "reject", "brand:Nike", at="2026-11-30T12:05:00Z"),  # the last decision wins
            _feedback("ghost", "add", "brand:Sony"),  # no text anywhere: skipped
            b"garbage",
        ],
    )
    out = tmp_path / "rows.jsonl"
    argv = ["export", "--topic", fb_topic, "--review-topic", rev_topic, "--bootstrap", broker]
    args = cli_args(feedback_export, [*argv, "--out", str(out), "--base", str(base), "--idle-s", "2"])
    assert feedback_export.run(args) == 0
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 61 and "ghost" not in rows
    assert rows["p0"]["tags"] == [p0_tags[0], "colour:red"]
    assert rows["new-1"] == {"id": "new-1", "title": "Puma green sneakers", "tags": ["category:Footwear"]}
    assert rows["p1"]["tags"] == base_rows[1]["tags"]
    started = time.monotonic()
    meta = train.train(train_args(out, tmp_path / "run", build_tiny_base(tmp_path / "base"), "--max-steps", "2"))
    assert meta.train_rows + meta.val_rows == 61 and meta.bad_rows == 0
    assert "colour:red" not in meta.decisions.labels, "a label seen once stays below --min-tag-count"
    assert time.monotonic() - started < 600


@pytest.mark.parametrize("pid", ["x" * 230])
def test_export_skips_products_whose_ids_training_rows_refuse(pid: str) -> None:
    from schemas.events import TagFeedback
    from worker.feedback_export import merge

    item = ReviewItem.model_validate(
        {
            "event_id": "e",
            "product_id": pid,
            "tags": [],
            "model_version": "m",
            "content_hash": "h",
            "tagged_at": "2026-11-30T12:00:00Z",
            "cached": False,
            "source_topic": "in",
            "source_partition": 0,
            "source_offset": 1,
            "title": "t",
            "reasons": [],
        }  # fmt: skip
    )
    fb = TagFeedback.model_validate(
        {"product_id": pid, "action": "add", "tag": "a:b", "reviewer": "r", "at": "2026-11-30T12:00:00Z"}
    )
    rows, stats = merge([], {pid: item}, [fb])
    assert rows == [] and stats.without_text == [pid]
