"""Bad product events: every kind the fault audit asked for, from an injected random generator.

Every value generated here must be dead-lettered (none is a valid product event), so the suite
can count a fuzzed record that was tagged, or neither tagged nor dead-lettered, as a failure.
Pure: no I/O, deterministic for a given `random.Random`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

THREE_MB = 3 * 1024 * 1024


@dataclass(frozen=True)
class Fuzzed:
    kind: str
    key: bytes | None
    value: bytes | None


def _pid(rng: random.Random) -> str:
    return f"fz-{rng.getrandbits(48):012x}"


def random_bytes(rng: random.Random) -> Fuzzed:
    raw = rng.randbytes(rng.randint(1, 300))
    if raw[:1] in (b"{", b"[", b'"') or raw.strip()[:1].isdigit():
        raw = b"\xff" + raw  # never accidentally valid JSON
    return Fuzzed("random_bytes", rng.randbytes(rng.randint(0, 16)) or None, raw)


def truncated_json(rng: random.Random) -> Fuzzed:
    full = json.dumps(
        {"product_id": _pid(rng), "title": "Alisha Solid Women's Cycling Shorts", "description": "x" * 40}
    )
    return Fuzzed("truncated_json", None, full[: rng.randint(1, len(full) - 1)].encode())


def wrong_types(rng: random.Random) -> Fuzzed:
    pid = _pid(rng)
    variants: list[object] = [
        {"product_id": 12345, "title": "Nike running shoes"},
        {"product_id": pid, "title": ["Nike", "shoes"]},
        {"product_id": pid, "title": {"en": "Nike shoes"}},
        {"product_id": pid, "title": None},
        {"product_id": pid, "title": True},
        {"product_id": pid, "title": 3.5},
        {"product_id": pid, "title": "Nike", "description": 7},
        {"product_id": None, "title": "Nike shoes"},
        {"title": "no product id"},
        {"product_id": pid},
        [pid, "Nike shoes"],
        "just a string",
        42,
        None,
        {"product_id": "", "title": "empty id"},
        {"product_id": pid, "title": "   "},
    ]
    return Fuzzed("wrong_types", pid.encode(), json.dumps(rng.choice(variants)).encode())


def huge_fields(rng: random.Random) -> Fuzzed:
    pid = _pid(rng)
    variants = [
        {"product_id": pid, "title": "T" * rng.randint(10_000, 200_000)},
        {"product_id": pid, "title": "ok", "description": "D" * rng.randint(100_000, 500_000)},
        {"product_id": "P" * rng.randint(1_000, 100_000), "title": "ok"},
    ]
    return Fuzzed("huge_fields", pid.encode(), json.dumps(rng.choice(variants)).encode())


def huge_key(rng: random.Random) -> Fuzzed:
    # The value is bad too: what a huge key alone should do is the worker's policy, not ours to fix.
    key = rng.randbytes(rng.randint(10_000, 300_000))
    return Fuzzed("huge_key", key, b"not json at all " + rng.randbytes(8).hex().encode())


def invalid_utf8(rng: random.Random) -> Fuzzed:
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    head = b'{"product_id": "' + _pid(rng).encode() + b'", "title": "Nike '
    return Fuzzed("invalid_utf8", None, head + bad + b' shoes"}')


def deep_nesting(rng: random.Random) -> Fuzzed:
    depth = rng.choice([50, 1_000, 100_000])
    inner = "[" * depth + "]" * depth
    # The nesting is in the title, so a parser that copes with the depth still has no valid title.
    return Fuzzed("deep_nesting", None, ('{"product_id": "' + _pid(rng) + '", "title": ' + inner + "}").encode())


def nan(rng: random.Random) -> Fuzzed:
    token = rng.choice(["NaN", "Infinity", "-Infinity"])
    return Fuzzed("nan", None, ('{"product_id": "' + _pid(rng) + '", "title": ' + token + "}").encode())


def huge_number(rng: random.Random) -> Fuzzed:
    digits = "9" + "".join(rng.choice("0123456789") for _ in range(4_999))
    where = rng.choice(["title", "product_id", "top"])
    pid = _pid(rng)
    if where == "top":
        return Fuzzed("huge_number", None, digits.encode())
    other = '"title": "Nike shoes"' if where == "product_id" else f'"product_id": "{pid}"'
    return Fuzzed("huge_number", None, ("{" + other + f', "{where}": {digits}' + "}").encode())


def three_mb(rng: random.Random) -> Fuzzed:
    body = json.dumps({"product_id": _pid(rng), "title": "x" * THREE_MB}).encode()
    return Fuzzed("three_mb_value", None, body)


def tombstone(rng: random.Random) -> Fuzzed:
    return Fuzzed("tombstone", _pid(rng).encode(), None)


# Cheap kinds dominate the mix; the expensive ones (MBs per event) are rare.
KINDS: dict[str, tuple[Callable[[random.Random], Fuzzed], int]] = {
    "random_bytes": (random_bytes, 30),
    "truncated_json": (truncated_json, 25),
    "wrong_types": (wrong_types, 25),
    "invalid_utf8": (invalid_utf8, 10),
    "nan": (nan, 5),
    "deep_nesting": (deep_nesting, 2),
    "huge_fields": (huge_fields, 1),
    "huge_key": (huge_key, 1),
    "huge_number": (huge_number, 1),
    "tombstone": (tombstone, 1),
}


def generate(n: int, rng: random.Random, *, three_mb_values: int = 1) -> Iterator[Fuzzed]:
    """`n` bad events: one of each kind first (so every kind is present even for small n),
    `three_mb_values` 3 MB values, then a weighted random mix."""
    names = list(KINDS)
    weights = [KINDS[k][1] for k in names]
    made = 0
    for name in names:
        if made >= n:
            return
        yield KINDS[name][0](rng)
        made += 1
    for _ in range(min(three_mb_values, n - made)):
        yield three_mb(rng)
        made += 1
    while made < n:
        yield KINDS[rng.choices(names, weights)[0]][0](rng)
        made += 1
