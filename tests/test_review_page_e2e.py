"""The whole loop with a person in it: `tagger worker` routes an uncertain item to the review topic,
`tagger review` shows it in headless Chromium, a reviewer rejects one of its tags and adds another
with the keyboard, and the worker's next tag event for that product carries the correction.
Real processes, the real broker (Tansu) and the real Redis."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from schemas.events import ReviewItem, TagEvent
from scripts.local_services import create_topics, wait_until
from tests.kafka_helpers import produce, read_all, start_worker, worker_env
from tests.model_factory import make_rows
from tests.review_process import CHROMIUM, DRIVER, NO_BROWSER, chrome, focused, keys, review_page, wait_status

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=NO_BROWSER)
pytest.importorskip("selenium", reason="selenium (the dev extra) is not installed")

from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _product(pid: str, row: dict[str, Any]) -> bytes:
    return json.dumps({"product_id": pid, "title": row["title"], "description": row.get("description")}).encode()


def _tag_events(broker: str, topic: str, pid: str, n: int) -> list[TagEvent]:
    def enough(msgs: list[Any]) -> bool:
        return sum(json.loads(m.value)["product_id"] == pid for m in msgs) >= n

    events = [TagEvent.model_validate_json(m.value) for m in read_all(broker, topic, enough, 90)]
    return [e for e in events if e.product_id == pid]


def test_a_correction_made_on_the_page_changes_the_next_tag_event(
    broker: str, redis_url: str, tiny_model: Path, unique: str, tmp_path: Path
) -> None:
    review_topic, feedback_topic = f"review-{unique}", f"feedback-{unique}"  # the names review_page() uses
    out_topic = f"out-{unique}"
    create_topics(broker, {f"in-{unique}": 1, out_topic: 1, f"dlq-{unique}": 1, review_topic: 1, feedback_topic: 1})
    env = worker_env(
        broker,
        redis_url,
        tiny_model,
        unique,
        TAGGER_KAFKA__REVIEW_TOPIC=review_topic,
        TAGGER_KAFKA__FEEDBACK_TOPIC=feedback_topic,
        TAGGER_REVIEW__MARGIN="0.6",  # a tiny model: route most items, so some surely reach the page
    )
    rows = {f"prod-{i}": r for i, r in enumerate(make_rows(12, seed=5))}
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        produce(broker, f"in-{unique}", [_product(pid, r) for pid, r in rows.items()])
        routed = read_all(broker, review_topic, lambda m: any(json.loads(x.value)["tags"] for x in m), 90)
        item = next(i for i in (ReviewItem.model_validate_json(m.value) for m in routed) if i.tags)
        rejected, added = item.tags[0].tag, "colour:teal"
        assert added not in {t.tag for t in item.tags}

        with review_page(broker, unique, tmp_path, [], expect={item.product_id}, reviewer="ana") as page, chrome() as b:
            b.get(f"{page.url}/?p={quote(item.product_id, safe='')}")
            WebDriverWait(b, 10).until(lambda d: focused(d)["tag"] == rejected)  # the first tag has focus
            keys(b, "r")
            wait_status(b, f"Saved: rejected {rejected} (ana)")
            keys(b, "i", added, Keys.ENTER)
            wait_status(b, f"Saved: added {added} (ana)")
            decisions = page.feedback(lambda got: len(got) >= 2)
        assert [(fb.action, fb.tag) for _, fb in decisions] == [("reject", rejected), ("add", added)]

        # The worker keeps the decisions as overrides (the sync point: both written), then the same
        # product comes again: its next tag event (a cache hit of the model's tags) is corrected.
        client = redis.Redis.from_url(redis_url)
        key = f"t-{unique}:overrides:{item.product_id}"
        wait_until(lambda: client.hlen(key) == 2, 30, "the worker writing both overrides")
        before = _tag_events(broker, out_topic, item.product_id, 1)[0]
        assert rejected in {t.tag for t in before.tags}, "the rejected tag was the model's"
        produce(broker, f"in-{unique}", [_product(item.product_id, rows[item.product_id])])
        after = _tag_events(broker, out_topic, item.product_id, 2)[-1]
        tags = {t.tag: t for t in after.tags}
        assert rejected not in tags
        assert tags[added].source == "human"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
