"""Pure pieces of the fault suite (bench/chaos): accounting, the fuzz generator, the proxy's
request-header parsing. No broker here; the suite itself runs in test_chaos_quick.py (slow)."""

from __future__ import annotations

import json
import random
import re
import struct
from pathlib import Path

import pytest

from bench.chaos import fuzz
from bench.chaos.accounting import DeadOut, Sent, TagOut, caught_up, committed_unacknowledged, lag, slope, tally
from bench.chaos.proxy import parse_client_id
from schemas.events import ProductEvent
from worker.decode import Invalid, decode_product
from worker.settings import LimitSettings


def _tag(pid: str, p: int, o: int, eid: str | None = None, chash: str = "c1") -> TagOut:
    return TagOut(eid or f"id-{pid}", pid, chash, "m1", p, o)


def test_tally_counts_each_outcome_once_and_finds_the_lost() -> None:
    sent = [Sent(0, 0, "a", True), Sent(0, 1, "b", True), Sent(1, 0, None, False), Sent(1, 1, "c", True)]
    tags = [_tag("a", 0, 0), _tag("a", 0, 0)]  # a replay with the same id: a duplicate, not a difference
    dead = [DeadOut("not_json", 1, 0)]
    t = tally(sent, tags, dead)
    assert (t.sent, t.tagged, t.dead_lettered, t.lost) == (4, 1, 1, 2)
    assert t.lost_sample == [(0, 1), (1, 1)]
    assert t.duplicates == 1 and t.dup_diff_id == 0
    assert t.reasons == {"not_json": 1}
    assert (t.good_dead_lettered, t.bad_tagged, t.dead_without_reason) == (0, 0, 0)


def test_tally_flags_different_ids_for_the_same_content_and_model() -> None:
    sent = [Sent(0, 0, "a", True), Sent(2, 5, "a", True)]
    t = tally(sent, [_tag("a", 0, 0, "id-1"), _tag("a", 2, 5, "id-2")], [])
    assert t.dup_diff_id == 1
    # Same product with new content is a new tagging, not a duplicate.
    t2 = tally(sent, [_tag("a", 0, 0, "id-1", "c1"), _tag("a", 2, 5, "id-2", "c2")], [])
    assert t2.dup_diff_id == 0


def test_tally_wrong_outcomes_and_expected_dead_letters() -> None:
    sent = [Sent(0, 0, "good", True), Sent(0, 1, None, False), Sent(0, 2, "poison", True), Sent(0, 3, "x", True)]
    tags = [_tag("bad", 0, 1), _tag("x", 0, 3)]
    dead = [DeadOut("schema", 0, 0), DeadOut("inference_failed", 0, 2)]
    t = tally(sent, tags, dead, expected_dead={(0, 2): "inference_failed"})
    assert t.good_dead_lettered == 1  # "good" was dead-lettered; the poison item was expected to be
    assert t.bad_tagged == 1
    assert t.expected_dead_missing == 0
    missing = tally(sent, tags, [DeadOut("schema", 0, 0)], expected_dead={(0, 2): "inference_failed"})
    assert missing.expected_dead_missing == 1 and missing.lost == 1
    blank = tally([Sent(0, 0, None, False)], [], [DeadOut("", 0, 0)])
    assert blank.dead_without_reason == 1


def test_lag_and_catch_up_use_end_offsets_minus_committed() -> None:
    ends = {0: 10, 1: 5, 2: 0}
    assert lag(ends, {0: 7, 1: None, 2: None}) == 3 + 5
    assert lag(ends, {0: 10, 1: 5}) == 0
    assert not caught_up(ends, {0: 10, 1: 4, 2: 0})
    assert caught_up(ends, {0: 11, 1: 5, 2: None})


def test_committed_unacknowledged_counts_records_below_the_commit_without_output() -> None:
    sent = [Sent(0, o, f"p{o}", True) for o in range(5)] + [Sent(1, 0, "q", True)]
    acked = {(0, 0), (0, 1), (0, 3)}
    assert committed_unacknowledged(sent, {0: 4, 1: None}, acked) == 1  # (0, 2) committed, never published
    assert committed_unacknowledged(sent, {0: 2, 1: 0}, acked) == 0


def test_slope() -> None:
    assert slope([(0, 100), (1, 110), (2, 120)]) == pytest.approx(10)
    assert slope([(0, 5), (1, 5), (2, 5)]) == 0
    assert slope([(1, 5)]) == 0


def test_fuzz_generates_every_kind_and_none_is_a_valid_product() -> None:
    events = list(fuzz.generate(400, random.Random(3)))
    kinds = {e.kind for e in events}
    assert kinds == set(fuzz.KINDS) | {"three_mb_value"}
    assert len(events) == 400
    big = [e for e in events if e.kind == "three_mb_value"]
    assert len(big) == 1 and big[0].value is not None and len(big[0].value) >= 3 * 1024 * 1024
    number = next(e for e in events if e.kind == "huge_number")
    assert number.value is not None and re.search(rb"[0-9]{5000}", number.value)
    assert max(len(e.key or b"") for e in events if e.kind == "huge_key") >= 10_000
    for e in events:
        assert not _valid_product(e.value), e.kind


def _valid_product(raw: bytes | None) -> bool:
    """Independent of the worker's decoder: strict UTF-8, JSON with a 4,300-digit cap raising,
    then the ProductEvent contract and a non-blank title."""
    if raw is None:
        return False
    try:
        obj = json.loads(raw.decode("utf-8"))
        event = ProductEvent.model_validate(obj)
    except (ValueError, RecursionError, TypeError):
        return False
    return bool(event.title.strip()) and len(raw) <= LimitSettings().max_message_bytes


def test_fuzz_is_deterministic_for_a_seed() -> None:
    a = [(e.kind, e.key, e.value) for e in fuzz.generate(50, random.Random(9))]
    b = [(e.kind, e.key, e.value) for e in fuzz.generate(50, random.Random(9))]
    assert a == b


def test_fuzz_kinds_the_old_decoder_already_dead_letters() -> None:
    """A check of the generator against today's decoder for the kinds it handles (the 5,000-digit
    number is left out: it raises in the decoder, which the chaos suite reports as a crash)."""
    limits = LimitSettings()
    for e in fuzz.generate(200, random.Random(5)):
        if e.kind == "huge_number":
            continue
        assert isinstance(decode_product(e.value, limits), Invalid), e.kind


def test_parse_client_id_from_a_request_header() -> None:
    body = struct.pack(">hhih", 18, 3, 7, len(b"chaos-worker-w1")) + b"chaos-worker-w1" + b"\x00rest"
    frame = struct.pack(">i", len(body)) + body
    assert parse_client_id(frame) == "chaos-worker-w1"
    assert parse_client_id(frame[:10]) is None  # needs more bytes
    assert parse_client_id(frame[:20]) is None
    null = struct.pack(">ihhih", 10, 18, 3, 7, -1)
    assert parse_client_id(null) == ""


def test_poisoned_artifact_fails_only_on_the_poison_token(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from bench.chaos.model import POISON_WORD, poisoned_artifact
    from worker.artifact import load_manifest
    from worker.engine import TagEngine

    src = tmp_path / "model"
    shutil.copytree(tiny_model, src)
    poisoned = poisoned_artifact(src)
    assert load_manifest(poisoned, verify=True).model_version != load_manifest(src).model_version

    def engine(path: Path) -> TagEngine:
        return TagEngine(path, provider="cpu", allow_cpu_fallback=False, int8=False, intra_op_threads=1,
                         verify=True, max_items=64, max_tokens=8192)  # fmt: skip

    texts = ["Nike blue running shoes", "Alisha red cotton shirt", "Sony black laptop"]
    good, bad = engine(src), engine(poisoned)
    assert bad.tag_texts(texts) == good.tag_texts(texts)  # the guard adds exactly 0 without the token
    with pytest.raises(Exception, match="out of data bounds"):
        bad.tag_texts([texts[0], f"Nike {POISON_WORD} shoes"])
    assert good.tag_texts([f"Nike {POISON_WORD} shoes"])  # the real model has no trouble with it
