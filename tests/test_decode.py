import json

import pytest

from schemas.events import ProductEvent
from worker.decode import Invalid, cache_key, content_hash, decode_product, event_id, model_text
from worker.settings import LimitSettings

LIMITS = LimitSettings(max_message_bytes=5_000, max_title_chars=100, max_description_chars=200, max_product_id_chars=20)


def ok(obj: object) -> ProductEvent:
    result = decode_product(json.dumps(obj).encode(), LIMITS)
    assert isinstance(result, ProductEvent), result
    return result


def reason(raw: bytes | None) -> str:
    result = decode_product(raw, LIMITS)
    assert isinstance(result, Invalid), result
    return result.reason


def test_valid_event_with_extra_fields() -> None:
    ev = ok({"product_id": "p1", "title": "Red shirt", "description": "Cotton", "price": 9.5})
    assert (ev.product_id, ev.title, ev.description) == ("p1", "Red shirt", "Cotton")
    assert model_text(ev) == "Red shirt . Cotton"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "not_json"),
        (b"{not json", "not_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (b'{"title": "no id"}', "schema"),
        (b'{"product_id": 5, "title": "id must be a string"}', "schema"),
        (b'{"product_id": "p", "title": "   "}', "empty_title"),
        (json.dumps({"product_id": "p", "title": "x" * 101}).encode(), "oversized_field"),
        (json.dumps({"product_id": "p", "title": "t", "description": "d" * 201}).encode(), "oversized_field"),
        (json.dumps({"product_id": "p" * 21, "title": "t"}).encode(), "oversized_field"),
        (b"[" * 100_000, "too_large"),
    ],
)
def test_bad_input_has_a_reason(raw: bytes | None, expected: str) -> None:
    assert reason(raw) == expected


def test_deeply_nested_json_is_not_a_crash() -> None:
    deep = b"[" * 2_400 + b"]" * 2_400  # under the size limit, deeper than json's recursion limit
    result = decode_product(deep, LimitSettings())
    assert isinstance(result, Invalid) and result.reason in {"not_json", "not_object"}


def test_identity_is_deterministic_and_versioned() -> None:
    h = content_hash("Red shirt")
    assert h == content_hash("Red shirt") and h != content_hash("Red shirts")
    assert cache_key("t:", "v1", h) != cache_key("t:", "v2", h)
    assert cache_key("t:", "v1", h).startswith("t:v1:")
    assert event_id("p1", h, "v1") == event_id("p1", h, "v1")
    assert len({event_id("p1", h, "v1"), event_id("p2", h, "v1"), event_id("p1", h, "v2")}) == 3


def test_a_number_over_4300_digits_is_a_dead_letter_not_a_crash() -> None:
    # Python's int parser refuses more than 4,300 digits with a plain ValueError (not a
    # JSONDecodeError); one such record used to crash the worker on every restart.
    raw = b'{"product_id": "p1", "title": "t", "price": ' + b"9" * 5000 + b"}"
    result = decode_product(raw, LimitSettings())
    assert isinstance(result, Invalid) and result.reason == "not_json", result


def test_a_lone_surrogate_escape_is_a_dead_letter() -> None:
    # Valid UTF-8 bytes, but "\ud800" decodes to a string that cannot be encoded (hashed) again.
    assert reason(b'{"product_id": "p1", "title": "bad \\ud800 title"}') == "not_json"
