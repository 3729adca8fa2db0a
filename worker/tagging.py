"""Step 2, tagging: cache lookup (`CacheLookup`, on the poll thread, so hits skip batching and
tokenizing), then for a batch of misses inference and cache fill (`TagBatch`, on the batch thread).

Identical content is looked up and inferred once. An inference failure is isolated by splitting
the batch (bisection): only the item that makes the model fail is rejected (`inference_failed`),
the rest is tagged. Pure logic over two Protocols (`Engine`, `Cache`), tested with fakes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from worker.batcher import padded_tokens
from worker.cache import Cache
from worker.decode import Invalid, cache_key
from worker.engine import Encoded, Outputs, Tag
from worker.evidence import (
    EvidenceSpan,
    ExplainBasis,
    fields_of,
    near_misses,
    neighbourhood,
    rebase,
    tag_evidence,
)
from worker.metrics import Metrics
from worker.records import Parsed, Rejected, Valid, where
from worker.settings import EvidenceSettings

log = logging.getLogger(__name__)


class InferenceFault(Exception):
    """Every item of a batch failed on its own: the engine is broken, not the input (a fault)."""


class Engine(Protocol):
    """What the loop needs of `worker.engine.TagEngine`."""

    @property
    def model_version(self) -> str: ...

    @property
    def taxonomy_version(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> list[Encoded]: ...

    def run(self, items: list[Encoded]) -> Outputs: ...

    def decode(self, items: list[Encoded], outputs: Outputs) -> list[list[Tag]]: ...

    @property
    def explain_basis(self) -> ExplainBasis | None:
        """Labels, thresholds, lexical channel (evidence, review); None: a model without them."""


def tag_dict(x: Tag) -> dict[str, Any]:
    """A tag as published (schemas/events.py TagScore), and as a cache entry keeps it."""
    d: dict[str, Any] = {"tag": x.tag, "score": float(min(1.0, max(0.0, x.score)))}
    if x.evidence:  # optional fields (issue 13): absent rather than null, so events stay as small as before
        d["evidence"] = [{"field": e.field, "start": e.start, "end": e.end, "text": e.text} for e in x.evidence]
    if x.source is not None:
        d["source"] = x.source
    return d


def tags_json(tags: Sequence[Tag]) -> bytes:
    return orjson.dumps([tag_dict(x) for x in tags])


def fields_print(title: str, description: str | None) -> str:
    """Which original fields a result's evidence spans index. Products sharing a cache entry share
    their model text, not always their fields (whitespace is collapsed): a hit whose fields differ
    has its spans checked and moved (`_rebased`); one with the same fields is published as read."""
    d = description or ""
    return hashlib.blake2b(f"{len(title)}:{title}{d}".encode(), digest_size=8).hexdigest()


def _scored(pairs: Any) -> list[Tag]:
    """[[tag, score], ...] of an entry's header -> `Tag`s without evidence; TypeError/ValueError for
    anything else (a corrupt entry: a miss)."""
    out = []
    for tag, score in pairs:
        if type(tag) is not str or type(score) not in (float, int):
            raise TypeError("not a tag and a score")
        out.append(Tag(tag, score))
    return out


def _from_dict(d: dict[str, Any]) -> Tag:
    """A published tag with its evidence; spans of the wrong types are dropped (the tag is kept)."""
    try:
        spans = tuple(EvidenceSpan(e["field"], e["start"], e["end"], e["text"]) for e in d.get("evidence", ()))
        if not all(type(e.start) is int and type(e.end) is int and type(e.text) is str for e in spans):
            raise TypeError("evidence span of the wrong types")
    except (TypeError, KeyError):
        log.warning("cache entry with malformed evidence for %r: published without it", d.get("tag"))
        spans = ()
    return Tag(d["tag"], float(d["score"]), spans, d.get("source"))


def _is_list(segment: bytes) -> bool:
    return segment[:1] == b"[" and segment[-1:] == b"]"


class TagResult:
    """One text's tags and near misses, shared by every item of a batch with that text.

    From inference: `Tag` lists. From a cache entry (`entry`): its header (names, scores, whose
    fields) and the published JSON of its tags and near misses, parsed into `Tag`s with their
    evidence only when something needs them (overrides, a review item, other fields). A hit's tag
    event embeds the tags' JSON as read, and its review decision reads the header (building every
    evidence span of every hit, checking and serialising them again, was 14 of the 27 us per hit that
    `bench.hit_costs` measured, before the collector's share). Never changed once built: overrides
    and moved evidence make a new result."""

    __slots__ = ("_tags", "_candidates", "_json", "_near_json", "_scored", "fields")

    def __init__(self, tags: list[Tag], candidates: list[Tag] | None = None, fields: str | None = None) -> None:
        self._tags: list[Tag] | None = tags
        self._candidates: list[Tag] | None = candidates if candidates is not None else []
        self._json: bytes | None = None
        self._near_json: bytes | None = None
        self._scored: tuple[list[Tag], list[Tag]] | None = None
        self.fields = fields  # fields_print of the fields its evidence indexes (None: unknown)

    @classmethod
    def published(cls, raw: bytes, cut: int) -> TagResult:
        """From a cache entry (header up to `cut`); TypeError/KeyError/ValueError when it is not one of ours."""
        head = orjson.loads(raw[:cut])
        fields = head["fields"]
        if head.get("v") != ENTRY_VERSION or type(fields) is not str:
            raise TypeError("not a cache entry of this version")
        near_at = raw.index(b"\n", cut + 1)
        tags_json, near_json = raw[cut + 1 : near_at], raw[near_at + 1 :]
        if not (_is_list(tags_json) and _is_list(near_json)):
            raise ValueError("not a cache entry of this version")
        r = cls.__new__(cls)
        r._tags = r._candidates = None
        r._json, r._near_json, r.fields = tags_json, near_json, fields
        r._scored = (_scored(head["tags"]), _scored(head["candidates"]))
        return r

    @property
    def tags(self) -> list[Tag]:
        if self._tags is None:
            self._tags = [_from_dict(d) for d in orjson.loads(self.json())]
        return self._tags

    @property
    def candidates(self) -> list[Tag]:
        if self._candidates is None:
            assert self._near_json is not None
            self._candidates = [_from_dict(d) for d in orjson.loads(self._near_json)]
        return self._candidates

    def scored(self) -> tuple[list[Tag], list[Tag]]:
        """(tags, near misses) with names, scores and sources; evidence only if already parsed."""
        if self._scored is not None:
            return self._scored
        return self.tags, self.candidates

    def json(self) -> bytes:
        """The tags as a tag event carries them (`tags_json`), serialised once per result."""
        if self._json is None:
            self._json = tags_json(self.tags)
        return self._json

    def entry(self) -> bytes:
        """What the cache keeps: a header line (version, whose fields, names and scores), then the
        published JSON of the tags and of the near misses, one line each (JSON has no raw newline)."""
        head = {
            "v": ENTRY_VERSION,
            "fields": self.fields or "",
            "tags": [[t.tag, t.score] for t in self.tags],
            "candidates": [[t.tag, t.score] for t in self.candidates],
        }
        return b"\n".join((orjson.dumps(head), self.json(), tags_json(self.candidates)))

    def rebased(self, r: Parsed) -> TagResult:
        """This result with its evidence checked against `r`'s own fields (moved where they differ)."""
        return TagResult(_rebased(self.tags, r), _rebased(self.candidates, r), fields_print(*_fields(r)))


def _fields(r: Parsed) -> tuple[str, str | None]:
    return r.product.title, r.product.description


@dataclass(frozen=True)
class Tagged:
    record: Parsed
    result: TagResult
    cached: bool

    @property
    def tags(self) -> list[Tag]:
        return self.result.tags

    @property
    def candidates(self) -> list[Tag]:
        """Near misses below threshold (review)."""
        return self.result.candidates


# Cache entries. Written now (ENTRY_VERSION 3, `TagResult.entry`): a header line `{"v": 3, "fields":
# ..., "tags": [[tag, score], ...], "candidates": [...]}`, then the tags' and the near misses' JSON as
# published (`tags_json`), a line each. Still read: `[[tag, score], ...]`
# (the first format), `[tag, score, [[field, start, end, text], ...]]` for a tag with evidence, and
# `{"tags": [...], "candidates": [...]}` with near misses. Readers of the older formats take version
# 3 entries for corrupt ones, i.e. misses (a rolling upgrade re-infers them once).
ENTRY_VERSION = 3


def _entry(t: Tag) -> list[Any]:
    if not t.evidence:
        return [t.tag, float(t.score)]
    return [t.tag, float(t.score), [[e.field, e.start, e.end, e.text] for e in t.evidence]]


def _tag(e: Sequence[Any]) -> Tag:
    if len(e) == 2:
        return Tag(str(e[0]), float(e[1]))
    spans = []
    for f, a, b, x in e[2]:
        if type(a) is not int or type(b) is not int or type(x) is not str:
            raise TypeError("evidence span of the wrong types")  # a corrupt entry: a miss
        spans.append(EvidenceSpan(f, a, b, x))
    return Tag(str(e[0]), float(e[1]), tuple(spans))


def legacy_entry(tags: list[Tag], candidates: Sequence[Tag] = ()) -> bytes:
    """An entry of the formats before version 3 (tests and the upgrade path read them)."""
    body = [_entry(t) for t in tags]
    if not candidates:
        return orjson.dumps(body)
    return orjson.dumps({"tags": body, "candidates": [_entry(t) for t in candidates]})


def tags_to_cache(tags: list[Tag], candidates: Sequence[Tag] = (), fields: str | None = None) -> bytes:
    return TagResult(tags, list(candidates), fields).entry()


def result_from_cache(raw: bytes) -> TagResult | None:
    """None for anything that is not one of our formats: a corrupt entry is a miss."""
    try:
        if (cut := raw.find(b"\n")) > 0:
            return TagResult.published(raw, cut)
        obj = orjson.loads(raw)
        if isinstance(obj, dict):
            return TagResult([_tag(e) for e in obj["tags"]], [_tag(e) for e in obj.get("candidates", [])])
        return TagResult([_tag(e) for e in obj])
    except (ValueError, TypeError, KeyError, IndexError):  # orjson.JSONDecodeError is a ValueError
        return None


def tags_from_cache(raw: bytes) -> list[Tag] | None:
    result = result_from_cache(raw)
    return None if result is None else result.tags


def _rebased(tags: list[Tag], r: Parsed) -> list[Tag]:
    """A cache entry is shared by every product with the same model text (whitespace collapsed):
    its evidence spans are checked against this product's own fields, and moved where they differ."""
    p = r.product
    ok = all(
        (p.title if e.field == "title" else p.description or "")[e.start : e.end] == e.text
        for t in tags
        for e in t.evidence
    )
    return tags if ok else [t._replace(evidence=rebase(t.evidence, p.title, p.description)) for t in tags]


Annotated = tuple[list[Tag], list[Tag]]  # an item's tags (with evidence) and its near misses


class Explain:
    """After inference, on the batch thread: evidence for every tag (`worker/evidence.py`) and each
    item's near misses (labels within the review margin below their thresholds)."""

    def __init__(self, evidence: EvidenceSettings, margin: float) -> None:
        self.enabled, self.max_spans, self.margin = evidence.enabled, evidence.max_spans, margin

    def __call__(
        self, engine: Engine, items: Sequence[Parsed], outputs: Outputs, tags: list[list[Tag]]
    ) -> list[Annotated]:
        basis = engine.explain_basis
        out: list[Annotated] = []
        for i, (r, served) in enumerate(zip(items, tags, strict=True)):
            near = near_misses(basis, outputs.scores[i], {t.tag for t in served}, self.margin) if basis else []
            if not self.enabled:
                out.append((served, [Tag(c, round(s, 4)) for c, s in near]))
                continue
            fields = fields_of(r.product.title, r.product.description)
            around = neighbourhood(basis, outputs.trace.item(i) if outputs.trace is not None else None)

            def ev(tag: str, lexical: bool = True) -> tuple[EvidenceSpan, ...]:
                # Near misses get value spans only: their lexical evidence cost ~25% of the whole (bench).
                return tag_evidence(tag, fields, basis, around if lexical else None, self.max_spans)  # noqa: B023

            explained = [t._replace(evidence=ev(t.tag)) for t in served]
            out.append((explained, [Tag(c, round(s, 4), ev(c, lexical=False)) for c, s in near]))
        return out


def _for_fields(result: TagResult, r: Parsed) -> TagResult:
    """`result` as it applies to `r`: as it is when its evidence indexes `r`'s own fields."""
    return result if result.fields == fields_print(*_fields(r)) else result.rebased(r)


def _unique(items: list[Parsed]) -> dict[str, int]:
    """content hash -> index of its first item"""
    first: dict[str, int] = {}
    for i, r in enumerate(items):
        first.setdefault(r.chash, i)
    return first


class CacheLookup:
    """Split parsed records into cache hits (tagged, ready to publish) and misses (to infer).
    `model` is read on every call: with a `worker.reload.ModelHolder` lookups follow the live model."""

    def __init__(self, cache: Cache, key_prefix: str, model: Engine, metrics: Metrics) -> None:
        self.cache, self.key_prefix, self.model, self.metrics = cache, key_prefix, model, metrics

    def __call__(self, items: list[Parsed]) -> tuple[list[Tagged], list[Parsed]]:
        if not items:
            return [], []
        first = _unique(items)
        version = self.model.model_version
        keys = [cache_key(self.key_prefix, version, h) for h in first]
        with self.metrics.timed("cache_get"):
            raw = self.cache.get_many(keys)
        found = {h: result_from_cache(v) for h, v in zip(first, raw, strict=True) if v is not None}
        hits, misses = [], []
        for r in items:
            result = found.get(r.chash)
            if result is None:
                misses.append(r)
            else:
                hits.append(Tagged(r, _for_fields(result, r), cached=True))
        self.metrics.cache_hits.inc(len(hits))
        self.metrics.cache_misses.inc(len(misses))
        return hits, misses


class TagBatch:
    """Infer a batch of cache misses (each distinct text once) and fill the cache. The loop passes
    the engine the batch was prepared with (a hot reload switches engines between batches)."""

    def __init__(
        self, engine: Engine, cache: Cache, key_prefix: str, metrics: Metrics, explain: Explain | None = None
    ) -> None:
        self.engine, self.cache, self.key_prefix, self.metrics = engine, cache, key_prefix, metrics
        self.explain = explain

    def __call__(self, batch: list[Valid], engine: Engine | None = None) -> list[Tagged | Rejected]:
        if not batch:
            return []
        engine = engine or self.engine
        first = _unique(list(batch))
        unique = [batch[i] for i in first.values()]
        inferred: dict[str, TagResult | Invalid] = {
            h: a if isinstance(a, Invalid) else TagResult(a[0], a[1], fields_print(*_fields(r)))
            for (h, a), r in zip(zip(first, self._infer(unique, engine), strict=True), unique, strict=True)
        }
        fresh = {
            cache_key(self.key_prefix, engine.model_version, h): t.entry()
            for h, t in inferred.items()
            if not isinstance(t, Invalid)
        }
        if fresh:
            with self.metrics.timed("cache_set"):
                self.cache.set_many(fresh)
        out: list[Tagged | Rejected] = []
        for r in batch:
            result = inferred[r.chash]
            if isinstance(result, Invalid):
                out.append(Rejected(r.source, r.received, result))
            else:
                out.append(Tagged(r, _for_fields(result, r), cached=False))
        return out

    def _infer(self, items: list[Valid], engine: Engine) -> list[Annotated | Invalid]:
        encoded = [r.encoded for r in items]
        self.metrics.batch_tokens.observe(padded_tokens(max(len(e) for e in encoded), len(encoded)))
        m, started = self.metrics, self.metrics.now()
        try:
            results = self._bisect(items, engine)
        finally:
            # Waiting for another batch's graph run is not this batch's inference: its own stage.
            take = getattr(engine, "take_graph_wait", None)
            waited = take() if take is not None else 0.0
            own = max(0.0, m.now() - started - waited)
            m.stage.labels("graph_wait").observe(waited)
            m.stage.labels("inference").observe(own)
        if len(items) > 1 and all(isinstance(r, Invalid) for r in results):
            raise InferenceFault(f"all {len(items)} items failed inference one by one")
        m.inference.observe(own)
        return results

    def _bisect(self, items: list[Valid], engine: Engine) -> list[Annotated | Invalid]:
        encoded = [r.encoded for r in items]
        try:
            outputs = engine.run(encoded)
            tags = list(engine.decode(encoded, outputs))
        except Exception as exc:
            if len(items) == 1:
                log.warning("inference failed on %s: %s: %s", where(items[0].source), type(exc).__name__, exc)
                return [Invalid("inference_failed", f"{type(exc).__name__}: {str(exc)[:1000]}")]
            half = len(items) // 2
            return self._bisect(items[:half], engine) + self._bisect(items[half:], engine)
        return list(self._annotate(engine, items, outputs, tags))

    def _annotate(self, engine: Engine, items: list[Valid], outputs: Outputs, tags: list[list[Tag]]) -> list[Annotated]:
        if self.explain is not None:
            try:
                with self.metrics.timed("evidence"):
                    return self.explain(engine, items, outputs, tags)
            except Exception as exc:  # evidence is an extra: never a reason to lose the tags
                log.warning("evidence failed on a batch of %d: %s: %s", len(items), type(exc).__name__, exc)
        return [(t, []) for t in tags]
