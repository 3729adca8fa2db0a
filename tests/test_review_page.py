"""The review page (`tagger review`): pure parts with fakes, then the HTTP API of a real `tagger review`
process against the real broker."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.events import Evidence, ReviewItem, TagFeedback
from tests.review_samples import DESCRIPTION, TITLE, review_item
from worker.clock import RealClock
from worker.review_page.feed import ReviewFeed
from worker.review_page.feedback import FeedbackError, FeedbackPublisher, normalise_tag, parse_request
from worker.review_page.render import Span, highlight, render_detail, render_page, spans, valid
from worker.review_page.store import ReviewStore
from worker.testing import FakeClock, FakePublisher
from worker.transport import ConsumedRecord, Consumer, TransportError

AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _item(product_id: str = "p-1") -> ReviewItem:
    return ReviewItem.model_validate(review_item(product_id))


def _feedback(action: str = "reject", tag: str = "color:Black", at: datetime = AT, pid: str = "p-1") -> TagFeedback:
    raw = {"product_id": pid, "action": action, "tag": tag, "reviewer": "ana", "at": at, "feedback_id": "f1"}
    return TagFeedback.model_validate(raw)


# --- highlighting: offsets are code points into the original text --------------------------------


def test_highlight_marks_cjk_latin_and_text_after_an_emoji_by_code_point() -> None:
    marks = [Span(0, 4, 0), Span(5, 8, 1), Span(14, 26, 1)]
    out = highlight(TITLE, marks, ["brand:Nike", "category:Shoes"])
    assert out == (
        '<mark class="ev" data-tags="t0" title="brand:Nike">Nike</mark> '
        '<mark class="ev" data-tags="t1" title="category:Shoes">跑步鞋</mark> 男款 🏃 '
        '<mark class="ev" data-tags="t1" title="category:Shoes">running shoe</mark>'
    )


def test_overlapping_evidence_is_cut_into_marks_that_never_nest() -> None:
    out = highlight("abcdef", [Span(0, 4, 0), Span(2, 6, 1)], ["x:1", "y:2"])
    assert out == (
        '<mark class="ev" data-tags="t0" title="x:1">ab</mark>'
        '<mark class="ev" data-tags="t0 t1" title="x:1, y:2">cd</mark>'
        '<mark class="ev" data-tags="t1" title="y:2">ef</mark>'
    )


def test_evidence_that_does_not_match_the_text_is_not_highlighted() -> None:
    item = _item()
    assert [(s.start, s.end, s.index) for s in spans("title", item.title, item.tags)] == [
        (0, 4, 0),
        (5, 8, 1),
        (14, 26, 1),
    ]
    assert [(s.start, s.end) for s in spans("description", item.description, item.tags)] == [(27, 29)]
    assert valid(Evidence(field="title", start=5, end=8, text="跑步鞋"), TITLE)
    assert not valid(Evidence(field="title", start=4, end=7, text="跑步鞋"), TITLE)  # off by one
    assert not valid(Evidence(field="title", start=20, end=40, text="shoe"), TITLE)  # past the end
    assert not valid(Evidence(field="description", start=0, end=1, text="B"), None)  # no description
    # UTF-16 offsets (as JavaScript counts) of "running shoe" are 15..27: they do not match
    assert not valid(Evidence(field="title", start=15, end=27, text="running shoe"), TITLE)


def test_description_highlight_lands_on_the_cjk_span() -> None:
    html = render_detail(_item(), {})
    assert '<mark class="ev" data-tags="t1" title="category:Shoes">慢跑</mark>' in html
    assert '<mark class="ev" data-tags="t4" title="material:Mesh">mesh</mark>' in html  # a candidate's evidence
    assert DESCRIPTION.split("\n")[0].replace("mesh", "") in html


# --- escaping: every piece of product data is untrusted -------------------------------------------

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>&"\''


def test_everything_from_the_item_is_escaped() -> None:
    raw = review_item(product_id='p"><script>alert(3)</script>', title=HOSTILE + " Nike", description=HOSTILE)
    raw["tags"][0]["tag"] = 'brand:<b onmouseover="x()">'
    raw["tags"][0]["evidence"] = [{"field": "title", "start": 0, "end": 4, "text": "<img"}]
    raw["candidates"][0]["tag"] = 'gender:"><svg onload=alert(4)>'
    item = ReviewItem.model_validate(raw)
    reviewer_fb = _feedback("reject", item.tags[1].tag, pid=item.product_id).model_copy(
        update={"reviewer": "<i>mallory</i>"}
    )
    page = render_page([item], item, {item.tags[1].tag: reviewer_fb}, {item.product_id}, '"><b>x', "nonce123")
    assert page.count("<script") == 1 and page.count("</script>") == 1  # ours only
    for bad in ("<img", "<svg", "<b ", "<b>x", "<i>", 'onerror="', "<script>alert"):
        assert bad not in page.replace('<script nonce="nonce123">', ""), bad
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "&lt;i&gt;mallory&lt;/i&gt;" in page
    assert 'href="/?p=p%22%3E%3Cscript%3Ealert%283%29%3C%2Fscript%3E"' in page
    # the highlighted "<img" is escaped inside its mark
    assert '<mark class="ev" data-tags="t0" title="brand:&lt;b onmouseover=&quot;x()&quot;&gt;">&lt;img</mark>' in page


def test_page_shows_tags_scores_reasons_candidates_and_decisions() -> None:
    item = _item()
    decisions = {"color:Black": _feedback("reject"), "style:Sporty": _feedback("add", "style:Sporty")}
    page = render_page([item], item, decisions, {"p-1"}, "ana", "n0nce")
    rows = re.findall(r'<li class="row (\w+)"[^>]*data-tag="([^"]+)"[^>]*data-state="(\w*)"', page)
    assert rows == [
        ("tag", "brand:Nike", ""),
        ("tag", "category:Shoes", ""),
        ("tag", "color:Black", "reject"),
        ("candidate", "gender:Men", ""),
        ("candidate", "material:Mesh", ""),
        ("added", "style:Sporty", "add"),
    ]
    assert "0.62" in page and "near threshold 0.60" in page and "No tag for facet <b>gender</b>" in page
    assert "rejected by ana" in page and 'value="ana"' in page
    assert '<style nonce="n0nce">' in page and '<script nonce="n0nce">' in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


# --- the store ------------------------------------------------------------------------------------


def test_store_keeps_the_latest_item_per_product_and_is_bounded() -> None:
    store = ReviewStore(max_items=2)
    first = _item(product_id="a")
    assert store.put(first)
    newer = first.model_copy(update={"tagged_at": first.tagged_at + timedelta(minutes=1), "title": "new"})
    assert store.put(newer)
    assert not store.put(first)  # a replay of the older item
    kept = store.get("a")
    assert kept is not None and kept.title == "new"
    store.put(_item(product_id="b"))
    store.put(_item(product_id="c"))
    assert [i.product_id for i in store.items()] == ["c", "b"] and store.get("a") is None


def test_store_keeps_the_latest_decision_per_tag() -> None:
    store = ReviewStore(max_items=10)
    store.decide(_feedback("reject", at=AT))
    store.decide(_feedback("accept", at=AT + timedelta(seconds=5)))
    store.decide(_feedback("reject", at=AT + timedelta(seconds=1)))  # older, read later
    assert store.decisions("p-1")["color:Black"].action == "accept"


# --- requests and publishing ----------------------------------------------------------------------


def _store_with_item() -> ReviewStore:
    store = ReviewStore(10)
    store.put(_item())
    return store


def test_normalise_tag() -> None:
    assert normalise_tag(" brand : Acme Inc ") == "brand:Acme Inc"
    assert normalise_tag("category:Shoes:Running") == "category:Shoes:Running"
    for bad in ("Acme", ":Acme", "brand:", " : ", None, 3):
        with pytest.raises(FeedbackError):
            normalise_tag(bad)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"product_id": "nope", "action": "add", "tag": "a:b", "reviewer": "ana"}, 404),
        ({"product_id": "p-1", "action": "delete", "tag": "a:b", "reviewer": "ana"}, 400),
        ({"product_id": "p-1", "action": "add", "tag": "no colon", "reviewer": "ana"}, 400),
        ({"product_id": "p-1", "action": "add", "tag": "a:b", "reviewer": "  "}, 400),
        ({"product_id": "p-1", "action": "add", "tag": "a:b", "reviewer": "x" * 300}, 400),
        ({"product_id": "p-1", "action": "add", "tag": "a:" + "b" * 600, "reviewer": "ana"}, 400),
    ],
)
def test_bad_requests_are_refused(body: dict, status: int) -> None:
    with pytest.raises(FeedbackError) as err:
        parse_request(body, _store_with_item(), AT, lambda: "id")
    assert err.value.status == status


def test_a_request_becomes_a_feedback_event() -> None:
    body = {"product_id": "p-1", "action": "add", "tag": "style : Sporty", "reviewer": " ana "}
    fb = parse_request(body, _store_with_item(), AT, lambda: "f-9")
    assert (fb.product_id, fb.action, fb.tag, fb.reviewer, fb.at, fb.feedback_id) == (
        "p-1", "add", "style:Sporty", "ana", AT, "f-9"
    )  # fmt: skip


def test_feedback_is_published_keyed_by_product_once_acknowledged() -> None:
    clock = FakeClock()
    pub = FakePublisher(clock)
    FeedbackPublisher(pub, "fb", 10.0, clock).publish(_feedback())
    [(topic, key, value)] = pub.acked
    assert topic == "fb" and key == b"p-1"
    assert TagFeedback.model_validate_json(value) == _feedback()


def test_a_failed_delivery_is_retried_on_a_new_client() -> None:
    clock = FakeClock()
    pub = FakePublisher(clock)
    pub.fail_next = 1
    FeedbackPublisher(pub, "fb", 10.0, clock).publish(_feedback())
    assert len(pub.acked) == 1 and pub.resets == 1


def test_no_acknowledgement_in_time_is_an_error_for_the_page() -> None:
    clock = FakeClock()
    pub = FakePublisher(clock)
    pub.stall = lambda value: True
    start = clock.now()
    with pytest.raises(FeedbackError) as err:
        FeedbackPublisher(pub, "fb", 5.0, clock).publish(_feedback())
    assert err.value.status == 503 and "5 s" in err.value.message
    assert pub.acked == [] and clock.now() - start >= 5.0


# --- the reader -----------------------------------------------------------------------------------


def _no_broker() -> Consumer:
    raise TransportError("not in this test")


def test_feed_reads_items_and_decisions_and_skips_what_does_not_parse() -> None:
    store = ReviewStore(10)
    feed = ReviewFeed(_no_broker, "rv", "fb", store, threading.Event(), RealClock())

    def rec(topic: str, value: bytes, offset: int) -> ConsumedRecord:
        return ConsumedRecord(topic, 0, offset, b"p-1", value, None)

    feed.handle(
        [
            rec("rv", json.dumps(review_item()).encode(), 0),
            rec("rv", b"{not json", 1),
            rec("fb", _feedback().model_dump_json().encode(), 0),
            rec("fb", b'{"product_id": "p-1"}', 1),
        ]
    )
    assert store.get("p-1") is not None and store.decisions("p-1")["color:Black"].action == "reject"
    assert (feed.status.items, feed.status.decisions, feed.status.skipped) == (1, 1, 2)


# --- the HTTP API of a real `tagger review` process on the real broker ------------------------------


def _post(port: int, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/feedback",
        data=data,
        headers=headers or {"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_review_process_publishes_decisions_and_refuses_bad_requests(broker: str, unique: str, tmp_path: Path) -> None:
    from tests.review_process import review_page

    with review_page(broker, unique, tmp_path, [review_item()]) as page:
        assert (
            _post(page.port, {"product_id": "p-1", "action": "reject", "tag": "color:Black", "reviewer": "ana"})[0]
            == 200
        )
        status, body = _post(
            page.port, {"product_id": "p-1", "action": "add", "tag": "style: Sporty", "reviewer": "bo"}
        )
        assert status == 200 and body["tag"] == "style:Sporty"
        assert _post(page.port, {"product_id": "p-2", "action": "add", "tag": "a:b", "reviewer": "bo"})[0] == 404
        assert _post(page.port, {"product_id": "p-1", "action": "add", "tag": "nope", "reviewer": "bo"})[0] == 400
        form = b"product_id=p-1&action=reject&tag=brand%3ANike&reviewer=eve"
        assert _post(page.port, form, {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        cross = {"Content-Type": "application/json", "Origin": "http://evil.example"}
        assert (
            _post(page.port, {"product_id": "p-1", "action": "reject", "tag": "brand:Nike", "reviewer": "eve"}, cross)[
                0
            ]
            == 403
        )
        events = page.feedback(lambda got: len(got) >= 2)
        with urllib.request.urlopen(f"http://127.0.0.1:{page.port}/?p=p-1", timeout=10) as resp:
            csp = resp.headers["Content-Security-Policy"]
            html = resp.read().decode()
    assert [(k, e.action, e.tag, e.reviewer) for k, e in events] == [
        (b"p-1", "reject", "color:Black", "ana"),
        (b"p-1", "add", "style:Sporty", "bo"),
    ]
    assert all(e.at.tzinfo is not None and e.feedback_id for _, e in events)
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    assert 'data-tag="color:Black" data-kind="tag" data-state="reject"' in html


def test_the_queue_lists_a_bounded_number_of_items() -> None:
    from worker.review_page.render import MAX_LISTED, render_queue

    items = [_item(f"p-{i}") for i in range(MAX_LISTED + 5)]
    html = render_queue(items, None, set())
    assert html.count("<li>") == MAX_LISTED and "and 5 older items not listed" in html
