"""Extractive tagging, pure functions: align `facet:value` tags to character spans of the text,
turn spans into per-token BIO labels for training, and decode predicted BIO labels back into
`facet:span` tags. Works for CJK (no word boundaries) and mixed-script titles."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

IGNORE = -100  # special tokens: no loss


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    facet: str


def _is_word_char(ch: str) -> bool:
    # Letters and digits of scripts written with spaces; CJK characters are their own words.
    return (ch.isalnum() or ch == "_") and not _is_cjk(ch)


def _is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in {"W", "F"}


def find_span(text: str, value: str) -> tuple[int, int] | None:
    """First case-insensitive occurrence of `value` in `text` that does not cut a Latin word
    (`Puma` matches in `Puma Shoes`, not in `Pumatic`; `华为` matches inside `华为手机`).
    A value with `/`-separated alternatives (`pinkypinky/缤肌`) also matches any alternative."""
    value = value.strip()
    if not value:
        return None
    hit = _find(text, value)
    if hit is None and "/" in value:
        hits = [h for part in value.split("/") if len(part.strip()) > 1 and (h := _find(text, part.strip()))]
        hit = min(hits) if hits else None
    return hit


def _find(text: str, value: str) -> tuple[int, int] | None:
    for m in re.finditer(re.escape(value), text, flags=re.IGNORECASE):
        s, e = m.span()
        left_ok = s == 0 or not (_is_word_char(text[s - 1]) and _is_word_char(text[s]))
        right_ok = e == len(text) or not (_is_word_char(text[e - 1]) and _is_word_char(text[e]))
        if left_ok and right_ok:
            return s, e
    return None


def align(text: str, tags: Sequence[str], facets: Sequence[str]) -> list[Span]:
    """Spans of the tags whose facet is extractive and whose value occurs in the text.
    Overlapping spans keep the longer one."""
    found: list[Span] = []
    for tag in tags:
        facet, _, value = tag.partition(":")
        if facet not in facets:
            continue
        hit = find_span(text, value)
        if hit:
            found.append(Span(hit[0], hit[1], facet))
    found.sort(key=lambda sp: (-(sp.end - sp.start), sp.start))
    kept: list[Span] = []
    for sp in found:
        if all(sp.end <= k.start or sp.start >= k.end for k in kept):
            kept.append(sp)
    return sorted(kept, key=lambda sp: sp.start)


def n_classes(facets: Sequence[str]) -> int:
    return 1 + 2 * len(facets)


def bio_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[Span], facets: Sequence[str]) -> list[int]:
    """Per-token labels: 0 = O, 1 + 2f = B-facet f, 2 + 2f = I-facet f; special tokens IGNORE.
    A token belongs to a span when its characters overlap it."""
    index = {f: i for i, f in enumerate(facets)}
    labels = []
    previous_span: Span | None = None
    for s, e in offsets:
        if s == e:
            labels.append(IGNORE)
            previous_span = None
            continue
        hit = next((sp for sp in spans if s < sp.end and e > sp.start), None)
        if hit is None:
            labels.append(0)
        elif hit is previous_span:
            labels.append(2 + 2 * index[hit.facet])
        else:
            labels.append(1 + 2 * index[hit.facet])
        previous_span = hit
    return labels


def decode(
    text: str,
    offsets: Sequence[tuple[int, int]],
    label_ids: Sequence[int],
    label_probs: Sequence[float],
    facets: Sequence[str],
) -> list[tuple[str, float]]:
    """BIO predictions -> [(`facet:span text`, score)]; score = mean probability of the span's tokens.
    An I without a preceding B of the same facet starts a span (lenient decoding)."""
    out: list[tuple[str, float]] = []
    cur: tuple[int, int, int, list[float]] | None = None  # facet index, start, end, probs

    def close() -> None:
        if cur is not None:
            f, s, e, ps = cur
            value = " ".join(text[s:e].split()).strip(" -,/.")
            if value:
                out.append((f"{facets[f]}:{value}", sum(ps) / len(ps)))

    for (s, e), lab, p in zip(offsets, label_ids, label_probs, strict=True):
        if s == e or lab <= 0:
            close()
            cur = None
            continue
        f, is_inside = (lab - 1) // 2, (lab - 1) % 2 == 1
        if cur is not None and cur[0] == f and is_inside:
            cur = (f, cur[1], e, [*cur[3], p])
        else:
            close()
            cur = (f, s, e, [p])
    close()
    return out


def known_spellings(labels: Sequence[str]) -> dict[str, str]:
    """casefolded tag -> vocabulary label; `facet:a/b` labels are also reachable from `facet:a` and `facet:b`."""
    known: dict[str, str] = {}
    for label in labels:
        facet, _, value = label.partition(":")
        for part in value.split("/") if "/" in value else []:
            if len(part.strip()) > 1:
                known.setdefault(f"{facet}:{part.strip()}".casefold(), label)
    for label in labels:
        known[label.casefold()] = label
    return known


def merge(
    classified: Sequence[tuple[str, float]],
    extracted: Sequence[tuple[str, float]],
    known: dict[str, str],
    labels: AbstractSet[str] = frozenset(),
) -> list[tuple[str, float]]:
    """One score per tag: classified tags keep their own spelling (catalogs have labels that differ
    only in case, `brand:DISNEY` and `brand:Disney`, and gold uses one of them); an extracted tag
    spelled as a vocabulary label (`labels`) stays so, otherwise it takes the vocabulary's spelling
    when it matches a known label case-insensitively (the text's `ETTI` is not turned into the label
    `Etti` when `ETTI` is a label too); duplicates keep the higher score; highest score first."""
    best: dict[str, tuple[str, float]] = {}
    for tag, score in classified:
        if tag not in best or score > best[tag][1]:
            best[tag] = (tag, score)
    for tag, score in extracted:
        if tag not in labels:
            tag = known.get(tag.casefold(), tag)
        if tag not in best or score > best[tag][1]:
            best[tag] = (tag, score)
    return sorted(best.values(), key=lambda t: -t[1])


def extract(
    text: str, offsets: Sequence[tuple[int, int]], span_logits: np.ndarray, facets: Sequence[str]
) -> list[tuple[str, float]]:
    """Span logits of one item ([tokens, classes], padding already cut) -> extracted tags."""
    z = span_logits - span_logits.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    ids = probs.argmax(axis=-1)
    return decode(text, offsets, ids.tolist(), probs[np.arange(len(ids)), ids].tolist(), facets)
